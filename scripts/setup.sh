#!/usr/bin/env bash
# Create (or reuse) .venv, install requirements-dev.txt, then this repository as an editable package
# (pyproject.toml). Without an NVIDIA GPU, torch is installed first as $NPE_CPU_TORCH (default
# torch==2.13.0): a CPU build where the package index offers one,
# far smaller than the CUDA build that a plain `pip install torch` brings. With a GPU, pip's default
# (CUDA) build is used. Set PYTHON to pick the interpreter (default python3, 3.10 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null; then
  .venv/bin/pip install --quiet "${NPE_CPU_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet -r requirements-dev.txt
.venv/bin/pip install --quiet --no-deps -e .  # pyproject.toml: `import npe` from any folder
.venv/bin/python -c "import torch; print(f'torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
