#!/usr/bin/env bash
# One prepared GPU session, sized to end within DEADLINE_S seconds: bench, train the default UNet
# (gpu profile) for the time the bench leaves, ending with the learning rate decaying to zero,
# export its EMA weights, sample 200 images three ways and evaluate the recommended sampler's.
# Everything lands in $OUT (or ./gpu_out), seven files (the device tool brings back at most 8):
#   session.log, bench.json, loss.csv,
#   bar.csv            the fidelity bar checked every BAR_EVERY steps with the profile's sampler
#                      (DDIM-50, eta 1) and the training time so far: the time to reach the bar,
#   model.pt           fp16 EMA weights (< 16 MB) recommending that sampler (train --export),
#   evaluation.json    200 samples with that sampler against the training set,
#   samples.tar.gz     samples/ (that sampler), samples_eta0/ (DDIM-50, eta 0),
#                      samples_ddim100/ (DDIM-100, eta 1), grids/ and loss.png of the run,
#                      to be evaluated again off the GPU machine.
#
#   OUT=/tmp/x bash tools/gpu_session.sh                                   # on the GPU machine
#   OUT=/tmp/x PROFILE=smoke TRAIN_MINUTES=0.2 bash tools/gpu_session.sh   # dry run on a CPU
#
# Training time: TRAIN_MINUTES if set, else DEADLINE_S less the time spent so far (the bench)
# less AFTER_S (kept for the training's own setup and for exporting, sampling, evaluating).
# Its steps are what the bench's measured throughput fits into that time (85% of it: the bench
# leaves out the EMA update, logging and the bar checks), the profile's share of them (gpu: the
# last 30%) with a decaying learning rate, the profile's rate otherwise; --max-minutes stops the
# run at that time whatever the estimate.
# The full training checkpoint (model + EMA + optimizer, ~63 MB) stays on the machine; a second
# call on the same warm machine resumes it. Python packages needed beyond the GPU image: none
# (torch, numpy, scipy, scikit-image, matplotlib, imageio, tqdm, pillow, torchvision are there).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PROFILE=${PROFILE:-gpu}
DEADLINE_S=${DEADLINE_S:-540}
AFTER_S=${AFTER_S:-110}
TRAIN_MINUTES=${TRAIN_MINUTES:-}
N_SAMPLES=${N_SAMPLES:-200}
RUN=${RUN:-/tmp/mddpm_gpu_run}
BAR_EVERY=${BAR_EVERY:-500}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
log() { tee -a "$OUT/session.log"; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>&1 | log

if [ "$PROFILE" = gpu ]; then quick=(); else quick=(--quick); fi
python3 -m helpers bench "${quick[@]}" --json "$OUT/bench.json" 2>&1 | log

if [ -z "$TRAIN_MINUTES" ]; then
  TRAIN_MINUTES=$(python3 -c "print(round(max(0.5, ($DEADLINE_S - $SECONDS - $AFTER_S) / 60), 2))")
fi
if [ -f "$RUN/checkpoint.pt" ]; then
  recipe=(--resume)
else
  read -r steps decay < <(python3 - "$OUT/bench.json" "$TRAIN_MINUTES" "$PROFILE" <<'PY'
import json, sys
from helpers.train import profile_config
bench, minutes, cfg = json.load(open(sys.argv[1])), float(sys.argv[2]), profile_config(sys.argv[3])
per_second = bench["training"]["unet_fast"]["images_per_second"] / cfg.batch_size
steps = max(100, int(0.85 * per_second * minutes * 60) // 100 * 100)
print(steps, steps * cfg.lr_decay_steps // cfg.steps)  # the profile's decay, scaled to these steps
PY
  )
  recipe=(--profile "$PROFILE" --steps "$steps" --lr-decay "$decay" --bar-every "$BAR_EVERY")
fi
echo "[$SECONDS s] python -m helpers train --data voronoi_gb_64 --out $RUN ${recipe[*]} --max-minutes $TRAIN_MINUTES" | log
python3 -m helpers train --data voronoi_gb_64 --out "$RUN" "${recipe[@]}" --max-minutes "$TRAIN_MINUTES" \
  --export "$OUT/model.pt" --quiet 2>&1 | log
cp "$RUN/loss.csv" "$RUN/bar.csv" "$OUT/"

# the model's own sampler (the one its fidelity bar used, stored in model.pt), then two others
echo "[$SECONDS s] sampling" | log
mkdir -p "$OUT/pack"
python3 -m helpers sample --checkpoint "$OUT/model.pt" --n "$N_SAMPLES" --out "$OUT/pack/samples" --quiet 2>&1 | log
python3 -m helpers evaluate --generated "$OUT/pack/samples" --reference voronoi_gb_64 \
  --json "$OUT/evaluation.json" 2>&1 | log
python3 -m helpers sample --checkpoint "$OUT/model.pt" --n "$N_SAMPLES" --eta 0 \
  --out "$OUT/pack/samples_eta0" --quiet 2>&1 | log
python3 -m helpers sample --checkpoint "$OUT/model.pt" --n "$N_SAMPLES" --steps 100 --eta 1 \
  --out "$OUT/pack/samples_ddim100" --quiet 2>&1 | log
cp -r "$RUN/samples" "$OUT/pack/grids"
cp "$RUN/loss.png" "$OUT/pack/"
# hundreds of PNGs are too many files to bring back: one archive
tar -czf "$OUT/samples.tar.gz" -C "$OUT/pack" . && rm -r "$OUT/pack"
echo "[$SECONDS s] done" | log
ls -la "$OUT"
