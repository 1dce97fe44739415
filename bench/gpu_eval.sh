#!/usr/bin/env bash
# On the GPU machine: full 10,000-image test-set accuracy of the shipped diffusion models and the contrastive
# baseline, then the SD-2-sized engine benchmark. Logs go to $OUT (the device tool's result folder).
#   bash bench/gpu_eval.sh MODELS_DIR
set -u
M=${1:-src/diffdisc/assets/models}
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
acc() {  # acc SECONDS MODEL [args...]
  local s=$1 m=$2; shift 2
  timeout "$s" python3 bench/fmnist_accuracy.py --full-test --device cuda --batch 2048 --model "$M/$m" \
    --out "/tmp/acc/$m" "$@" 2>&1 | grep -v Warn | tee "$O/acc_$m.log"
  cp "/tmp/acc/$m/summary-full-fp32.json" "$O/summary_$m.json" 2>/dev/null
}
acc 80 fmnist-scenes-clip --scenes
acc 170 fmnist-classcond --strategies halving,ttest,exhaustive
acc 120 fmnist-scenes-text --scenes --strategies halving
cd bench && timeout 170 python3 gpu_sd2.py --batch 32 --items 512 2>&1 | grep -v Warn | tee "$O/sd2.log"
