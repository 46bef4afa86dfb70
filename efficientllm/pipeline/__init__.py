"""The one part of the library that knows about the DVC pipeline: the rest of efficientllm never imports DVC.

- `profiles`: named params.yaml overrides (profiles/<name>.yaml) run as `dvc exp run -S ...` experiments;
- `revisions`: the metric rows as they were at git revisions / DVC experiments, read through `dvc.api`
  without a checkout, loaded into the report's DuckDB views.

Kept apart so the wall is a rule a test checks (tests/test_architecture.py): measurement, models, techniques
and the report never depend on DVC (or Prefect, stages, flows); only this package may.

    efficientllm profile paper-pretrain --dry-run
"""
