#!/usr/bin/env bash
# Download, here where PyPI is reachable, the wheels bench/gpu_check.sh installs on the bare, offline GPU machine
# (Python 3.12, x86_64): into .whl/, which .git/info/exclude ignores (never committed; carry it: `.whl`).
#
#   bash bench/gpu_wheels.sh                  # bitsandbytes (int8 / int4 / QLoRA), gguf, and lm-eval's few wheels
#   bash bench/gpu_wheels.sh --no-lm-eval     # bitsandbytes and gguf only (~43 MB)
#
# lm-eval: the quantize cells score their tasks through efficientllm.evaluation.run_tasks, which imports lm_eval,
# and [eval] tasks may not be empty. On that machine lm_eval needs only these four wheels besides what it has
# (~10 MB; found by running the cloze task with every distribution the machine lacks hidden). Pins = requirements/cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

wheels=(bitsandbytes==0.50.2 gguf==0.19.0)
if [[ ${1:-} != --no-lm-eval ]]; then
  wheels+=(lm_eval==0.4.13 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
fi

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
mkdir -p .whl

for w in "${wheels[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"
done
ls -l .whl
du -sh .whl
