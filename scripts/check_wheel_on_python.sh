#!/usr/bin/env bash
# Installs an ampkit wheel into a fresh venv of any CPython >= 3.10 (with torch==2.11.0 from PyPI)
# and trains one step there (scripts/train_one_step.py): the cp310-abi3 wheel built by one Python
# serves the others.
#   bash scripts/check_wheel_on_python.sh PYTHON WHEEL      e.g. python3.12 dist/ampkit-*.whl
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: $0 PYTHON WHEEL" >&2; exit 2; }
python="$1"
wheel="$(realpath "$2")"
script="$(realpath "$(dirname "${BASH_SOURCE[0]}")/train_one_step.py")"
venv="$(mktemp -d)/venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.11.0 numpy
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$wheel"
echo "$("$venv/bin/python" --version): $(basename "$wheel")"
(cd / && env -u PYTHONPATH "$venv/bin/python" "$script")
