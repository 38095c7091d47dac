#!/usr/bin/env bash
# One prepared GPU session: tools/gpu_session.py (its docstring lists the phases and the files it
# writes), run with the settings the device machine needs. Extra arguments go to it.
#   OUT=/tmp/x bash tools/gpu_session.sh                      # on the GPU machine, ~9 minutes
#   OUT=/tmp/x bash tools/gpu_session.sh --smoke              # dry run on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec python3 tools/gpu_session.py --out "${OUT:-gpu_out}" "$@"
