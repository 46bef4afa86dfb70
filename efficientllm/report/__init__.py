"""Report layer: DuckDB views over the metric rows, and the report folder built from them.

`views.connect` gives an in-memory DuckDB with the typed table `rows` and the views of `report/sql/*.sql`;
`build.build_report` writes index.md plus CSV / Parquet exports. Users reach the same views from the shell:

    python -m efficientllm.cli sql "SELECT * FROM leaderboard_pretrain"
"""
