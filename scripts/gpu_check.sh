#!/usr/bin/env bash
# The CUDA tests (pytest -m cuda): HetAdam over parameters on an NVIDIA GPU,
# against torch's fused AdamW on an fp32 host master, and the host-model bench
# on the GPU. Elsewhere these tests skip, with the reason.
#
# Needs a torch built for CUDA in the virtualenv (`make setup` installs the CPU
# wheel): .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu126
# Usage: scripts/gpu_check.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__}: install a CUDA build of torch and check nvidia-smi")
print("GPU:", torch.cuda.get_device_name(), "torch", torch.__version__)'
"$PY" -m pytest -m cuda -q -rA -p no:cacheprovider tests "$@"
