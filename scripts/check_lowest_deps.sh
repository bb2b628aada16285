#!/usr/bin/env bash
# The test suite on the oldest dependency versions pyproject.toml allows (.ci/lowest.txt), in a
# venv of its own, for users who install latentode into an environment they already have.
#
#   bash scripts/check_lowest_deps.sh                 # torch: the CPU build on this disk (2.13.0)
#   TORCH=2.4.1 bash scripts/check_lowest_deps.sh     # torch's own bound (a ~2.5 GB CUDA build)
#   VENV=/tmp/lowest bash scripts/check_lowest_deps.sh -k forecast   # extra args go to pytest
#
# The [hopper] and [sweeps] extras are left out (their pins are exact; their tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-lowest}
torch=${TORCH:-2.13.0}
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q "torch==$torch"
pip install -q -c .ci/lowest.txt -r .ci/lowest.txt torchdiffeq==0.2.5 torchode==1.0.1
pip install -q --no-deps -e .
pip check
python - <<'EOF'
from importlib.metadata import version
names = ["torch"] + [line.split("==")[0] for line in open(".ci/lowest.txt")
                     if line.strip() and not line.startswith("#")]
print("testing on:", ", ".join(f"{n} {version(n)}" for n in names))
EOF
python -m pytest -q -p no:cacheprovider "$@"
