#!/usr/bin/env bash
# One prepared GPU session: tools/gpu_session.py (its docstring lists the phases and the files it
# writes), run with the settings the device machine needs. Extra arguments go to it; the session's
# files go to $OUT (the device machine sets it), or to --out: a folder without the files it writes.
#   OUT=/tmp/x bash tools/gpu_session.sh                      # on the GPU machine, ~9 minutes
#   OUT=/tmp/x bash tools/gpu_session.sh --smoke              # dry run on a CPU
set -euo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ! python3 -c "import torch" 2>/dev/null; then
    echo "error: tools/gpu_session.sh: python3 cannot import torch; expected the project's environment" \
         "(make install, then source .venv/bin/activate)" >&2
    exit 2
fi
exec python3 "$(dirname "$0")/gpu_session.py" "$@"   # paths given are the caller's, not the repository's
