"""efficientllm: a reproducible benchmark of LLM efficiency techniques.

The library never imports Prefect, stages or flows; only `efficientllm.pipeline` knows about DVC (profiles run as
`dvc exp run`, rows read at other revisions). It never reads params.yaml for its own settings: the stages load
the sections they declare and pass typed configs in (tests/test_architecture.py keeps these walls).

    efficientllm --help
"""

__version__ = "0.1.0"
