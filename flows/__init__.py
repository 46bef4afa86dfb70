"""Prefect flows over the DVC pipeline: `flows.benchmark` runs it cell by cell and shows it in the Prefect UI.

Flows orchestrate; they hold no measurement logic. They read the pipeline from DVC (`flows.dvc_graph`)
and run stages through `dvc repro`; the efficientllm library never imports Prefect or DVC.

    make flow        # python -m flows.benchmark, on Prefect's ephemeral local API
"""
