"""Report layer: DuckDB views over the metric rows, and the reports, plots and answers built from them.

- `views`: an in-memory DuckDB with the typed table `rows` and the views of `report/sql/*.sql` (latest,
  measured, pretrain / finetune / quantize, failures, scores, leaderboards, pareto, revision_diff);
- `claims`: the paper's findings as data (a verdict rule each, over a query of `report/sql/claims/`);
- `recommend`: Pareto-optimal techniques under memory / latency / quality-drop limits;
- `compare`: a Markdown diff of two revisions;
- `plots`: Pareto fronts, radars, latency box plots, loss curves (matplotlib, PNG);
- `build`: reports/index.md, one page per axis, the figures and CSV / Parquet exports;
- `tables`: number and Markdown formatting shared by the above.

Rows at git revisions / DVC experiments are read by `efficientllm.pipeline.revisions` (the DVC-aware part)
into the same views; this package never imports DVC.

Users reach the same views from the shell:

    efficientllm sql "SELECT * FROM leaderboard_pretrain"
"""
