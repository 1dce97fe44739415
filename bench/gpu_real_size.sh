#!/usr/bin/env bash
# On a lent GPU (H100 / H200): real-width denoisers (bench/configs, random weights, bf16) — raw forward calls/s
# at 512 px and each model's native size with the batch autotuned, peak accelerator memory at batch 1 and at the
# tuned batch, then eager vs torch.compile at the native size. Needs ~8 minutes; logs and JSON go to $OUT.
#   bash bench/gpu_real_size.sh
# Not run yet (no device was lent when it was written); rows that fail say so in the JSON and the log.
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
O=${OUT:-/tmp/out}; mkdir -p "$O"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} 2>&1 | tee "$O/device.txt"
run() {  # run SECONDS NAME [real_size.py args...]
  local s=$1 n=$2; shift 2
  timeout "$s" python3 bench/real_size.py --device cuda --out "$O/$n.json" "$@" 2>&1 \
    | grep -v -E "Warn|Enum subclass|torchao. Tensor" | tee "$O/$n.log"
}
# 1. eager, all seven denoisers, full depth, bf16 weights, 512 px and native, batch 1, 2, 4, ... tuned (~4 min)
run 260 eager --models sd15,sd2,sdxl,sd35m,sd35l,flux,pixart --dtypes bf16 --no-compile --max-batch 64 --seconds 1.5
# 2. torch.compile vs eager at the native size, at the tuned batch (compile takes 0.5-2 min a model)
run 200 compiled --models sd15,sdxl,sd35m,flux --dtypes bf16 --gpu-res native --max-batch 16 --seconds 1.5
ls -la "$O"
