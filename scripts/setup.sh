#!/usr/bin/env bash
# One-command, idempotent setup: Debian packages for ffcv's build, .venv, fasttarget[dev] editable.
# Fast when everything is already there: each step checks before it works.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PKGS=(libopencv-dev libturbojpeg0-dev libjpeg62-turbo-dev gcc pkg-config)

missing=()
for pkg in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    echo "setup: ffcv's build needs the Debian packages: ${missing[*]}" >&2
    echo "setup: run 'sudo apt-get install -y ${missing[*]}' as root, then rerun scripts/setup.sh" >&2
    exit 1
  fi
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  if ! command -v apt-get >/dev/null; then
    echo "setup: apt-get is not available; install the equivalents of ${missing[*]} and rerun" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPY=.venv/bin/python

# Already installed with every extra we need? Then there is nothing to do.
stamp=.venv/.fasttarget-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && "$VPY" -c "import fasttarget, ffcv, kornia, pytest_benchmark, lightning, ray, submitit" 2>/dev/null; then
  echo "setup: up to date"
  exit 0
fi

"$VPY" -m pip install -q --upgrade pip setuptools wheel
# torch first, pinned to the release whose wheels lie on this kind of machine; elsewhere pip resolves the range.
if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
  "$VPY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || "$VPY" -m pip install -q torch torchvision
fi
# ray and slurm: the sweep backends' tests run in the default test run.
"$VPY" -m pip install -q -e ".[dev,lightning,ray,slurm]"
echo "$want" > "$stamp"
echo "setup: done ($("$VPY" -c 'import torch, ffcv, kornia; print("torch", torch.__version__, "kornia", kornia.__version__)'))"
