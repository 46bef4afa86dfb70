"""The vision axis (efficientllm/vision), fast: the DiT variants' attention shapes and K/V sizes, GQA and MLA against
plain attention computed by hand, the Fréchet distance, the data sources and split, the feature classifier, the
torchmetrics FID path on a random stand-in network, every PEFT method on the DiT, the params checks, and both cells
run in-process on a tiny budget.

    python -m pytest tests/test_vision.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from efficientllm.config import (
    ConfigError,
    FinetuneVisionConfig,
    MeasureConfig,
    PretrainVisionConfig,
    VisionConfig,
    VisionEvalConfig,
    check_references,
)
from efficientllm.records import CellId
from efficientllm.vision.data import ImageSet, load_split, load_stats, prepare_images, stratified_split
from efficientllm.vision.quality import fd_report, frechet_distance, load_classifier, save_classifier, train_classifier
from efficientllm.vision.recipes import DiTShape, check_vision, dit_kwargs

dit = pytest.importorskip("efficientllm.vision.dit", reason="diffusers is not installed")

RECIPES = {"mha": {"attention": "mha"}, "mqa": {"attention": "gqa", "kv_heads": 1},
           "gqa": {"attention": "gqa", "kv_heads": 2}, "mla": {"attention": "mla", "kv_lora_rank": 16},
           "moe": {"mlp": "moe", "num_experts": 4, "num_experts_per_tok": 2}}


def _batch(n: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randint(0, 10, (n,), generator=g))


# --- the DiT variants ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", list(RECIPES))
def test_variant_attention_shapes_and_kv_bytes(slug):
    # default shape: hidden 64 = 4 heads x 16, 2 blocks; K/V bytes (fp32) = per-layer width x 2 layers x 4 bytes
    torch.manual_seed(0)
    model = dit.build_dit(RECIPES[slug])
    shapes = dit.attention_shapes(model)
    kv_width = {"mha": 64, "mqa": 16, "gqa": 32, "mla": 64, "moe": 64}[slug]
    assert shapes["to_q"] == (64, 64)
    assert shapes["to_k"] == shapes["to_v"] == ((kv_width, 16) if slug == "mla" else (kv_width, 64))
    per_layer = {"mha": 2 * 64, "mqa": 2 * 16, "gqa": 2 * 32, "mla": 16, "moe": 2 * 64}[slug]
    assert dit.kv_bytes_per_token(model, 4) == per_layer * 2 * 4
    if slug == "mla":
        assert shapes["kv_a_proj"] == (16, 64)
    x, t, y = _batch()
    out = model(x, timestep=t, class_labels=y).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    described = dit.describe(model)
    assert described["attention"] == {"mha": "mha", "mqa": "mqa", "gqa": "gqa", "mla": "mla", "moe": "mha"}[slug]
    assert (dit.aux_loss(model) is not None) == (slug == "moe")


def test_moe_reuses_the_text_experts_and_counts_active_parameters():
    from efficientllm.models.accounting import count_parameters
    from efficientllm.models.moe import MixtureOfExperts

    model = dit.build_dit(RECIPES["moe"])
    assert sum(isinstance(m, MixtureOfExperts) for m in model.modules()) == 2
    counts = count_parameters(model)
    expert = sum(p.numel() for p in model.transformer_blocks[0].ff.moe.experts[0].parameters())
    assert counts["total"] - counts["active"] == 2 * (4 - 2) * expert  # 2 blocks x (E - k) unrouted experts
    model(*_batch()[:1], timestep=_batch()[1], class_labels=_batch()[2])
    assert float(dit.aux_loss(model).detach()) > 0


def _plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(QK^T / sqrt(D)) V per head, by hand: (B, N, H*D) each -> (B, N, H*D)."""
    B, N, _ = q.shape
    q, k, v = (t.view(B, N, heads, -1).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(B, N, -1)


def test_gqa_equals_mha_with_each_kv_head_repeated_over_its_group():
    torch.manual_seed(0)
    gqa = dit.make_attention("gqa", 64, 4, 2, None)
    h = torch.randn(2, 16, 64)
    k = gqa.to_k(h).view(2, 16, 2, 16).repeat_interleave(2, dim=2).reshape(2, 16, 64)  # KV head j serves q 2j, 2j+1
    v = gqa.to_v(h).view(2, 16, 2, 16).repeat_interleave(2, dim=2).reshape(2, 16, 64)
    expected = gqa.to_out[0](_plain_attention(gqa.to_q(h), k, v, 4))
    torch.testing.assert_close(gqa(h), expected, rtol=1e-5, atol=1e-5)


def test_mla_attends_over_keys_and_values_expanded_from_one_latent():
    torch.manual_seed(0)
    mla = dit.make_attention("mla", 64, 4, None, 8)
    h = torch.randn(2, 16, 64)
    latent = mla.kv_a_norm(mla.kv_a_proj(h))  # (B, N, r): 8 numbers per token and layer
    assert latent.shape == (2, 16, 8)
    expected = mla.to_out[0](_plain_attention(mla.to_q(h), mla.to_k(latent), mla.to_v(latent), 4))
    torch.testing.assert_close(mla(h), expected, rtol=1e-5, atol=1e-5)


def test_saved_dit_loads_back_with_its_variant(tmp_path):
    model = dit.build_dit(RECIPES["mla"]).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert not list(tmp_path.glob("*.bin"))
    back = dit.VisionDiT.from_pretrained(tmp_path).eval()
    x, t, y = _batch()
    torch.testing.assert_close(back(x, timestep=t, class_labels=y).sample, model(x, timestep=t, class_labels=y).sample)


@pytest.mark.parametrize("recipe, match", [({"attention": "gqa", "kv_heads": 3}, "kv_heads"),
                                           ({"attention": "mla"}, "kv_lora_rank"),
                                           ({"attention": "nsa"}, "attention"), ({"heads": 2}, "unknown key")])
def test_bad_recipes_are_refused_naming_the_key(recipe, match):
    with pytest.raises(ValueError, match=match):
        dit_kwargs(DiTShape(8, 1, 10, 2, 64, 2, 4), recipe)


# --- the Fréchet distance -----------------------------------------------------------------------------------------


def test_frechet_distance_is_zero_on_identical_sets_and_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a shifted copy: the covariances are equal, so FD = |shift|^2 exactly
    assert frechet_distance(a, a + 2.0) == pytest.approx(5 * 4.0, rel=1e-9)
    # golden: scipy's sqrtm in the textbook formula (pytorch-fid's computation)
    from scipy import linalg

    b = rng.normal(size=(150, 5)) * [1, 2, 0.5, 1, 3]
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_class_conditional_fd_sees_shuffled_labels_the_pooled_fd_does_not(classifier_and_data):
    classifier, val = classifier_and_data
    classes = list(range(10))
    same = fd_report(classifier, val.images, val.labels, val, classes)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["fd_class_mean"] == pytest.approx(0.0, abs=1e-6)
    shuffled = np.random.default_rng(0).permutation(val.labels)
    moved = fd_report(classifier, val.images, shuffled, val, classes)
    assert moved["fd"] == pytest.approx(0.0, abs=1e-6)  # the same images, pooled
    assert moved["fd_class_mean"] > 1.0 and moved["sample_accuracy"] < 0.5  # but not of the classes asked for


# --- data and the classifier ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision") / "data"
    prepare_images(VisionConfig(), out)
    return out


@pytest.fixture(scope="module")
def classifier_and_data(digits_dir, tmp_path_factory):
    train, val = load_split(digits_dir, "train"), load_split(digits_dir, "val")
    model, scores = train_classifier(train, val, VisionEvalConfig(classifier_hidden=32, classifier_epochs=80))
    folder = tmp_path_factory.mktemp("classifier")
    save_classifier(model, folder, {"in_features": 64, "hidden": 32, "num_classes": 10, **scores})
    return load_classifier(folder)[0], val


def test_digits_are_split_per_class_with_held_out_classes(digits_dir):
    stats = load_stats(digits_dir)
    assert stats["n_train"] + stats["n_val"] == 1797 and stats["num_classes"] == 10
    assert stats["pretrain_classes"] == list(range(8)) and stats["heldout_classes"] == [8, 9]
    assert all(v >= 1 for v in stats["val_per_class"])
    train = load_split(digits_dir, "train")
    assert train.images.shape[1:] == (1, 8, 8) and -1.0 <= train.images.min() < train.images.max() <= 1.0
    again = stratified_split(np.repeat(np.arange(3), 10), 0.2, 1234)
    assert [len(x) for x in again] == [24, 6] and np.array_equal(again[1], stratified_split(
        np.repeat(np.arange(3), 10), 0.2, 1234)[1])  # seeded


def test_classifier_separates_the_digits(classifier_and_data):
    classifier, val = classifier_and_data
    from efficientllm.vision.quality import accuracy

    assert accuracy(classifier, val.images, val.labels) > 0.85


def test_image_folder_and_hub_sources_read_the_same_pictures(tmp_path):
    from PIL import Image

    root = tmp_path / "pics"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    folder = VisionConfig(source="image_folder", path=str(root), image_size=8, channels=3, heldout_classes=(1,),
                          val_fraction=0.25)
    stats = prepare_images(folder, tmp_path / "a")
    assert stats["class_names"] == ["cat", "dog"] and stats["dataset"] == "pics" and stats["n_val"] == 2
    assert load_split(tmp_path / "a", "train").images.shape[1:] == (3, 8, 8)
    pytest.importorskip("datasets")
    hub = VisionConfig(source="hub", hub_id=str(root), image_column="image", image_size=8, channels=3,
                       heldout_classes=(1,), val_fraction=0.25)
    stats_hub = prepare_images(hub, tmp_path / "b")
    assert stats_hub["n_train"] == stats["n_train"] and stats_hub["class_names"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="heldout_classes"):
        prepare_images(VisionConfig(source="image_folder", path=str(root), heldout_classes=(5,)), tmp_path / "c")


def test_inception_fid_path_offline_on_a_random_stand_in():
    pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (vision_eval.fd_backend: torchmetrics)")
    from efficientllm.vision.quality import inception_fid

    torch.manual_seed(0)
    stand_in = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6))  # [0, 1] RGB -> 6 features
    stand_in.num_features = 6
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32)
    assert inception_fid(real, real, feature=stand_in) == pytest.approx(0.0, abs=1e-3)
    assert inception_fid(np.clip(real + 0.8, -1, 1), real, feature=stand_in) > 0.01


# --- PEFT on the DiT ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "loraplus", "rslora", "dora", "pissa", "freeze", "full"])
def test_every_peft_method_trains_the_dit(method):
    from efficientllm.techniques import METHODS, make_optimizer

    torch.manual_seed(0)
    base = dit.build_dit(RECIPES["mha"])
    total = sum(p.numel() for p in base.parameters())
    model = METHODS[method](base, FinetuneVisionConfig())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trainable)
    assert 0 < n <= sum(p.numel() for p in model.parameters())
    if method == "full":
        assert n == total
    elif method == "freeze":  # the last block + the output head
        from efficientllm.techniques.peft_methods import trainable_modules

        assert trainable_modules(model) == ["proj_out_1", "proj_out_2", "transformer_blocks.1"]
    else:
        assert n < total // 5 and any("lora_" in name for name, _ in model.named_parameters())
    before = [p.detach().clone() for p in trainable]
    opt = make_optimizer(method, model, FinetuneVisionConfig())
    x, t, y = _batch()
    model(x, timestep=t, class_labels=y).sample.pow(2).mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))


# --- params checks -----------------------------------------------------------------------------------------------


def _params(**matrix) -> dict:
    params = {"matrix": {"pretrain_vision": ["mha"], "finetune_vision": ["lora"], **matrix},
              "variants": {"mha": {}}, "vision": {}, "vision_eval": {}, "pretrain_vision": {}, "finetune_vision": {},
              "vision_variants": {"mha": {"attention": "mha"}, "bad": {"attention": "gqa", "kv_heads": 3}}}
    return params


def test_check_vision_refuses_bad_slugs_and_recipes_naming_them(tmp_path):
    from efficientllm.techniques import METHODS

    def check(**matrix):
        params = _params(**matrix)
        (tmp_path / "p.yaml").write_text(json.dumps(params))
        return check_vision(params, check_references(params, tmp_path / "p.yaml"), METHODS)

    assert check() == 1
    with pytest.raises(ConfigError, match=r"\[vision_variants\] unknown variant 'mhq' \(did you mean 'mha'\?\)"):
        check(pretrain_vision=["mhq"])
    with pytest.raises(ConfigError, match=r"\[vision_variants\] bad: kv_heads"):
        check(pretrain_vision=["bad"])
    with pytest.raises(ConfigError, match="qlora.*not offered"):
        check(finetune_vision=["qlora"])
    with pytest.raises(ConfigError, match="did you mean 'dora'"):
        check(finetune_vision=["dorra"])
    with pytest.raises(ConfigError, match=r"finetune_vlm has cells but the params file has no \[finetune_vlm\]"):
        check(finetune_vlm=["qwen"])


def test_the_vision_cells_run_in_one_process():
    from efficientllm.vision.pretrain import check_single_process

    with pytest.raises(ConfigError, match="nproc_per_node=2"):
        check_single_process(PretrainVisionConfig(nproc_per_node=2, batch_size=4))


# --- the two cells, in-process ---------------------------------------------------------------------------------


def test_pretrain_then_finetune_cells_write_rows_models_and_grids(digits_dir, tmp_path):
    from efficientllm.vision.finetune import finetune_vision_cell
    from efficientllm.vision.pretrain import pretrain_vision_cell

    veval = VisionEvalConfig(classifier_hidden=16, classifier_epochs=20, samples_per_class=4, sample_steps=2,
                             grid_per_class=2)
    train, val = load_split(digits_dir, "train"), load_split(digits_dir, "val")
    model, scores = train_classifier(train, val, veval)
    save_classifier(model, tmp_path / "clf", {"in_features": 64, "hidden": 16, "num_classes": 10, **scores})
    measure = MeasureConfig(peak_calibration_n=64, cache_dir=str(tmp_path / "cache"))
    cfg = PretrainVisionConfig(batch_size=8, steps=4, measure_warmup_steps=1, hidden_size=32, num_attention_heads=2)
    cell = CellId(axis="pretrain_vision", stage="pretrain_vision", cell="mqa", technique="mqa")
    out = pretrain_vision_cell(cell=cell, slug="mqa", recipe=RECIPES["mqa"], cfg=cfg, veval=veval, measure=measure,
                               data_dir=digits_dir, classifier_dir=tmp_path / "clf", model_out=tmp_path / "m",
                               sample_dir=tmp_path / "samples")
    row = out.row
    assert row["status"] == "ok" and row["quality_metric"] == "fd_digits" and row["quality_value"] >= 0
    assert row["seq_len"] == 16 and row["kv_cache_bytes_per_token"] == 2 * 16 * 2 * 4  # 1 KV head of 16, 2 layers
    assert row["steps"] == 3 and row["tt_tokens_per_param_s"] > 0 and row["st_samples_per_param_s"] > 0
    for part in ("mem_weights_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_activations_bytes"):
        assert row[part] and row[part] > 0, part  # the memory anatomy of the shared loop (probe: step 0's forward)
    assert row["extra"]["attention"] == "mqa" and row["extra"]["classes"] == list(range(8))
    assert set(row["extra"]["class_accuracy"]) == {str(c) for c in range(8)}
    assert (tmp_path / "samples" / "grid.png").exists() and (tmp_path / "m" / "config.json").exists()
    assert out.files["loss.csv"].startswith("step,loss")

    ft = FinetuneVisionConfig(base_model=str(tmp_path / "m"), batch_size=8, steps=3, measure_warmup_steps=1)
    cell = CellId(axis="finetune_vision", stage="finetune_vision", cell="dora", technique="dora")
    row = finetune_vision_cell(cell=cell, method="dora", cfg=ft, veval=veval, measure=measure, data_dir=digits_dir,
                               classifier_dir=tmp_path / "clf", out_dir=tmp_path / "adapter",
                               sample_dir=tmp_path / "ft_samples").row
    assert row["status"] == "ok" and row["extra"]["classes"] == [8, 9] and row["extra"]["fd_initial"] >= 0
    assert 0 < row["n_trainable_params"] < row["n_params"]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "FAILED.json").write_text("{}")
    with pytest.raises(RuntimeError, match="base DiT's cell failed"):
        finetune_vision_cell(cell=cell, method="lora", cfg=FinetuneVisionConfig(base_model=str(tmp_path / "failed")),
                             veval=veval, measure=measure, data_dir=digits_dir, classifier_dir=tmp_path / "clf",
                             out_dir=None, sample_dir=None)


def test_imageset_subsets():
    s = ImageSet(np.zeros((6, 1, 2, 2), np.float32), np.array([0, 0, 1, 1, 1, 2]), ["a", "b", "c"])
    assert s.subset([1]).labels.tolist() == [1, 1, 1]
    assert s.first_per_class(1).labels.tolist() == [0, 1, 2]
