#!/usr/bin/env bash
# One prepared GPU session: bench, train the default UNet (gpu profile) for a time budget,
# export its EMA weights, sample 200 images and evaluate them. Everything lands in $OUT
# (or ./gpu_out), eight files (the device tool brings back at most 8): session.log, bench.json,
# loss.csv, bar.csv (the fidelity bar checked every BAR_EVERY steps with the profile's sampler,
# DDIM-50 eta 1, and the training time so far: the time to reach the bar), model.pt (fp16,
# < 16 MB, recommending that sampler), samples.tar.gz and evaluation.json (200 samples with it),
# evaluation_eta0.json (the same model with deterministic DDIM, to check the choice of eta).
#
#   OUT=/tmp/x TRAIN_MINUTES=7 bash tools/gpu_session.sh          # on the GPU machine
#   OUT=/tmp/x TRAIN_MINUTES=0.2 PROFILE=smoke bash tools/gpu_session.sh   # dry run on a CPU
#
# The full training checkpoint (model + EMA + optimizer, ~63 MB) stays on the machine; the
# exported weights are what the repository ships. Python packages needed beyond the GPU image:
# none (torch, numpy, scipy, scikit-image, matplotlib, imageio, tqdm, pillow are there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PROFILE=${PROFILE:-gpu}
TRAIN_MINUTES=${TRAIN_MINUTES:-7}
N_SAMPLES=${N_SAMPLES:-200}
RUN=${RUN:-/tmp/mddpm_gpu_run}
BAR_EVERY=${BAR_EVERY:-500}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

if [ "$PROFILE" = gpu ]; then
  python3 -m helpers bench --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/session.log"
else
  python3 -m helpers bench --quick --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/session.log"
fi

if [ -f "$RUN/checkpoint.pt" ]; then resume=(--resume); else resume=(--profile "$PROFILE" --bar-every "$BAR_EVERY"); fi
python3 -m helpers train --data voronoi_gb_64 --out "$RUN" "${resume[@]}" --max-minutes "$TRAIN_MINUTES" \
  --quiet 2>&1 | tee -a "$OUT/session.log"
cp "$RUN/loss.csv" "$OUT/loss.csv"
cp "$RUN/bar.csv" "$OUT/bar.csv"
python3 - "$RUN" "$OUT/model.pt" <<'EOF'
import sys
from helpers import train
checkpoint = train.load_checkpoint(sys.argv[1] + "/checkpoint.pt")
sampler = train.run_sampler(train.TrainConfig(**checkpoint["train_config"]))
print("exported", train.export_weights(checkpoint, sys.argv[2], sampler=sampler), "recommending", sampler)
EOF

# the run's own sampler (the one its fidelity bar used, stored in model.pt), then deterministic DDIM
python3 -m helpers sample --checkpoint "$OUT/model.pt" --n "$N_SAMPLES" \
  --out "$OUT/samples" --force --quiet 2>&1 | tee -a "$OUT/session.log"
python3 -m helpers evaluate --generated "$OUT/samples" --reference voronoi_gb_64 \
  --json "$OUT/evaluation.json" 2>&1 | tee -a "$OUT/session.log"
python3 -m helpers sample --checkpoint "$OUT/model.pt" --n "$N_SAMPLES" --eta 0 \
  --out "$OUT/samples_eta0" --force --quiet 2>&1 | tee -a "$OUT/session.log"
python3 -m helpers evaluate --generated "$OUT/samples_eta0" --reference voronoi_gb_64 \
  --json "$OUT/evaluation_eta0.json" 2>&1 | tee -a "$OUT/session.log"
rm -r "$OUT/samples_eta0"
# the samples folder has N PNGs: too many files to bring back; pack them into one archive
tar -czf "$OUT/samples.tar.gz" -C "$OUT" samples && rm -r "$OUT/samples"
ls -la "$OUT"
