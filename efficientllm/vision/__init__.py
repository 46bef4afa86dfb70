"""The vision axis of the study (EfficientLLM section 6): do the efficiency techniques transfer to image models?

- `data`: the images (scikit-learn's UCI digits offline; image folders or a `datasets` id for real-size runs), split
  per class with a seed;
- `quality`: the feature classifier behind the Fréchet distance (`fd_<dataset>`), accuracy per class, and the
  standard Inception FID through torchmetrics for real-size images;
- `dit`: the class-conditional Diffusion Transformer, diffusers' own DiT with the attention (MHA / GQA / MQA /
  MLA-style low-rank KV) and feed-forward (dense / MoE) of each recipe;
- `sampling`: diffusers' DDPM (training) and DDIM (sampling) schedulers, PNG grids of samples;
- `diffusion`: the denoising step the one measured training loop runs, the judging, the row columns;
- `pretrain` / `finetune`: the `pretrain_vision@<variant>` and `finetune_vision@<method>` cells (the text axis'
  PEFT registry on the DiT);
- `vlm`: fine-tuning hub vision-language models (Qwen2.5-VL, SmolVLM) on image + text SFT rows.

Submodules import diffusers / transformers themselves; importing the package imports nothing heavy.

    python -m stages.pretrain_vision --variant mqa
"""
