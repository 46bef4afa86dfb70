#!/usr/bin/env bash
# GPU readiness check: the tiny pipeline on one CUDA device, without dvc / prefect / duckdb (bench/gpu_check.py
# says what runs and what is refused). A thin wrapper: installs the carried wheels (.whl/*.whl, made by
# bench/gpu_wheels.sh) into a folder of their own, puts the repository on PYTHONPATH, and runs the driver.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from a checkout (carry .whl); output in $OUT
#   bash bench/gpu_check.sh --dry-run    # anywhere: every command, in order; runs and installs nothing
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --dry-run
#
# Environment: PYTHON (default python3), OUT (output folder; default .gpu_check), GPU_CHECK_SITE (where the wheels
# go; default /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}

dry=0
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry=1; fi
done

shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  install=("$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}")
  if ((dry)); then
    echo "would install ${#wheels[@]} wheel(s): ${install[*]}"
  elif "$PY" -m pip --version >/dev/null 2>&1; then
    "${install[@]}"
  else  # no pip in this interpreter: a wheel is a zip file laid out for site-packages
    echo "no pip for $PY: unpacking the wheels into $SITE"
    mkdir -p "$SITE"
    for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# the driver reads params.yaml with the pipeline's own config loader
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_check.py "$@"
