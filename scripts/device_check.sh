#!/usr/bin/env bash
# GPU check for a lent machine (one NVIDIA H200, Python 3.12, CUDA torch 2.11, no internet, no ffcv):
# runs the `gpu`-marked tests, then the GPU benchmarks (resident loader, augment, Strategy B's
# side-stream overlap, full-width student img/s with compile + bf16 + channels_last at batch 512),
# and prints a short table last. Budget: under 8 minutes, each step under its own timeout.
#
# Usage (from the repository root):
#   bash scripts/device_check.sh            # on the GPU machine
#   bash scripts/device_check.sh --dry-run  # anywhere: check the setup, run nothing on a GPU
#
# Through the device tool, carrying the wheels below:
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
# The table and logs land in $OUT (the tool's output folder), else in /tmp/device-check.
#
# Packages the machine lacks travel as wheels in .whl/ (ignored by git). kornia is pure Python
# but needs kornia_rs; make them here once (pip must reach PyPI):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl kornia==0.9.0 kornia_rs==0.2.0
# ffcv has no wheel and needs OpenCV and libturbojpeg to build, so its paths are skipped there:
# the data comes from the bundled CIFAR-10 sample's source files, held by the resident backend.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && PY=.venv/bin/python
DRY=0
[[ ${1:-} == "--dry-run" ]] && DRY=1
RESULTS=${OUT:-/tmp/device-check}
mkdir -p "$RESULTS"

say() { printf '[device_check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# Carried wheels go to a private site dir: the machine's own environment stays untouched.
EXTRA=""
if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "wheel install failed"; exit 1; }
  EXTRA=/tmp/site
fi

# Without an install, `fasttarget` comes from src/ but its `fasttarget.kernels` lives in kernels/
# (setuptools' package-dir mapping): a symlink tree joins the two without touching the checkout.
if ! "$PY" -c "import fasttarget.kernels" 2>/dev/null; then
  PKG=/tmp/fasttarget-path
  rm -rf "$PKG" && mkdir -p "$PKG/fasttarget"
  ln -s "$REPO"/src/fasttarget/* "$PKG/fasttarget/"
  ln -s "$REPO/kernels" "$PKG/fasttarget/kernels"
  EXTRA=$PKG${EXTRA:+:$EXTRA}
fi
export PYTHONPATH=${EXTRA}${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF' || { say "fasttarget does not import; see above"; exit 1; }
import importlib.util, torch, fasttarget, fasttarget.kernels, fasttarget.bench
print("python", __import__("platform").python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available(), "kornia", importlib.util.find_spec("kornia") is not None,
      "ffcv", importlib.util.find_spec("ffcv") is not None)
EOF

if [[ $DRY -eq 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  say "no CUDA device here: nothing to measure. Run it on the GPU machine, or with --dry-run to check the setup."
  exit 3
fi

TABLE='import json, sys; from fasttarget.bench import Row, format_table
p = json.load(open(sys.argv[1])); print(format_table([Row(**r) for r in p["rows"]], p["machine"]))'

if [[ $DRY -eq 1 ]]; then
  say "dry run: collecting the gpu tests, then the CPU benchmark command at toy size"
  "$PY" -m pytest -m gpu --collect-only -q --continue-on-collection-errors tests benchmarks 2>&1 | tail -n 3
  "$PY" -m fasttarget.cli bench loader step --device cpu --repeats 1 --warmup 0 --batches 1 --json "$RESULTS/gpu-bench.json" \
    >"$RESULTS/dry-run.log" 2>&1 || { cat "$RESULTS/dry-run.log"; say "dry run failed"; exit 1; }
  "$PY" -c "$TABLE" "$RESULTS/gpu-bench.json"
  say "dry run done: the setup works (the numbers above are CPU numbers, not a GPU result)"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. The gpu-marked tests of the library (ffcv and kornia tests skip or fail to collect without
#    them; --continue-on-collection-errors keeps the rest running).
say "step 1/2: gpu-marked tests"
timeout 170 "$PY" -m pytest -m gpu -q -rs --continue-on-collection-errors --timeout 150 tests \
  2>&1 | tee "$RESULTS/gpu-tests.log"
TESTS_RC=${PIPESTATUS[0]}

# 2. The GPU benchmarks (benchmarks/gpu): loader, augment, B's overlap, student img/s; CUDA events
#    after warm-up; every row goes to one JSON table.
say "step 2/2: GPU benchmarks"
FASTTARGET_BENCH_JSON="$RESULTS/gpu-bench.json" timeout 290 "$PY" -m pytest -m gpu -q -rs --timeout 280 benchmarks \
  2>&1 | tee "$RESULTS/gpu-bench.log"
BENCH_RC=${PIPESTATUS[0]}

echo
echo "=== device check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1) ==="
echo "gpu tests:      exit $TESTS_RC  $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$RESULTS/gpu-tests.log" | tail -n1)"
echo "gpu benchmarks: exit $BENCH_RC  $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$RESULTS/gpu-bench.log" | tail -n1)"
if [[ -s "$RESULTS/gpu-bench.json" ]]; then
  "$PY" -c "$TABLE" "$RESULTS/gpu-bench.json"
else
  echo "no benchmark table (see $RESULTS/gpu-bench.log)"
fi
[[ $TESTS_RC -eq 0 && $BENCH_RC -eq 0 ]]
