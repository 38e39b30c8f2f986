#!/usr/bin/env bash
# Bootstraps, builds and runs ampkit's main job: the handwritten-digits CNN trained in FP32 and
# with amp=True side by side (examples/python/train_digits.py; extra arguments go to it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/bootstrap.sh
bash scripts/build.sh
"$PYTHON" examples/python/train_digits.py "$@"
