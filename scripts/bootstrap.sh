#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test ampkit. Idempotent: a second
# run checks and does nothing that is already done.
#   AMPKIT_USE_SYSTEM_PYTHON=1  use `python3` as it is (its own torch; no venv, no apt, no
#                               downloads): the GPU machine, which has no network.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/scripts/requirements-dev.txt"

log() { printf '[bootstrap] %s\n' "$*"; }

if [[ "${AMPKIT_USE_SYSTEM_PYTHON:-0}" == 1 ]]; then
  python3 -c "import torch, pytest, numpy" || { echo "[bootstrap] python3 lacks torch/pytest/numpy" >&2; exit 1; }
  log "using system python3 ($(python3 -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi

# ---- Debian packages ----
# libgl1, libglib2.0-0: OpenCV (pulled in by ultralytics, for its integration test) loads them.
packages=(build-essential cmake ninja-build ccache catch2 git python3-venv python3-dev libgl1 libglib2.0-0)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# A python3 other than Debian's (pyenv, a conda base) brings its own venv module and headers.
if python3 -c "import venv, sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 1)" 2>/dev/null; then
  filtered=()
  for package in "${missing[@]}"; do [[ "$package" == python3-venv || "$package" == python3-dev ]] || filtered+=("$package"); done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# ---- virtual environment ----
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.ampkit-requirements.sha256"
wanted="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  log "installing Python packages from scripts/requirements-dev.txt"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
  echo "$wanted" > "$stamp"
else
  log "Python packages present ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
fi
