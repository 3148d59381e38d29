#!/usr/bin/env bash
# The CUDA paths of train.py that a CPU cannot run: fp16 autocast + GradScaler, bf16 autocast,
# fine-tuning with channels_last, and resuming a CUDA checkpoint. Run on a GPU machine from the repo
# root (after `make install weights`); logs and metrics land in ${OUT:-runs/gpu_check}.
set -u
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
COMMON="experiment=demo logger=none paths.data_dir=${DATA_DIR:-data} trainer.device=cuda data.loader.num_workers=4"
run() { name=$1; shift; start=$SECONDS
  python train.py $COMMON hydra.run.dir=runs/gpu_check/$name "$@" > "$OUT/$name.log" 2>&1; rc=$?
  echo "== $name rc=$rc wall=$((SECONDS - start))s"
  tr '\r' '\n' < "$OUT/$name.log" | grep -E "^epoch [0-9]+/[0-9]+ loss|^test:|^test_novel:|caption for|^error" | cut -c1-400; }
run fp16 trainer.precision=fp16 trainer.epochs=15
python -c "import torch; s = torch.load('runs/gpu_check/fp16/last.pt', weights_only=True); print('GradScaler state in checkpoint:', s['scaler'])"
run bf16 trainer.precision=bf16 trainer.epochs=15
run finetune_fp16_cl trainer.precision=fp16 trainer.channels_last=true encoder.finetune=true trainer.epochs=3
run resume_fp16 trainer.precision=fp16 trainer.epochs=15 trainer.resume=runs/gpu_check/fp16
