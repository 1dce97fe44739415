#!/usr/bin/env bash
# Train shipped models at once on one GPU machine (the device tool's H100), each for MINUTES, then stop
# (checkpointed, EMA weights exported to OUTDIR/<recipe>/model).
#   bash bench/gpu_train.sh OUTDIR MINUTES "recipe steps [key=value ...]" ...
# Needs Fashion-MNIST in $DIFFDISC_FMNIST_DIR and diffusers/open_clip importable; run from the repo root.
set -u
OUT=$1; MIN=$2; shift 2
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
for spec in "$@"; do
  read -r recipe steps extra <<<"$spec"
  python3 bench/train_shipped.py "$recipe" "$OUT/$recipe" "$steps" $extra checkpoint_every=2000 --max-minutes "$MIN" &
done
wait
