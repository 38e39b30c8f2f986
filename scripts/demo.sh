#!/usr/bin/env bash
# Bootstraps, builds and runs ampkit's main demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/build.sh
"$PYTHON" examples/python/demo.py "$@"
