"""efficientllm: a reproducible benchmark of LLM efficiency techniques.

The library never imports DVC or Prefect and never reads params.yaml; stages do that.
    efficientllm --help
"""

__version__ = "0.1.0"
