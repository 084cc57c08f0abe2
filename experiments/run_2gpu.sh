#!/usr/bin/env bash
# The 2-GPU scaling runs (data-parallel DeepSpeed training), in one command on a machine with 2 GPUs (repo root, after
# experiments/gpu_wheels.sh filled .whl/ on a machine with PyPI):
#
#     bash experiments/run_2gpu.sh
#
# Runs experiments/train.ipynb with papermill three times on the 125m preset — 1 GPU DeepSpeed ZeRO-2 (the baseline:
# same code path, world size 1), 2 GPUs ZeRO-2, 2 GPUs ZeRO-3 — 30 optimizer steps each (no time budget: the first
# steps of a fresh process spend ~30 s each compiling and autotuning mamba_ssm's Triton kernels, and a 1-minute budget
# left only 3 steps, none of them steady), plus start-up, conversion, eval and sampling. Writes the executed notebooks,
# metrics and plots to papermill_runs/train_2gpu/<run>/ and a summary (per-GPU tokens/s, scaling efficiency =
# per-GPU throughput on 2 GPUs / throughput on 1, MFU) to papermill_runs/train_2gpu/results_2gpu.json; copies the
# notebooks, plots, summary and log to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEST=${DEST:-papermill_runs/train_2gpu}
mkdir -p "$DEST"
LOG="$DEST/run_2gpu.log"
exec > >(tee "$LOG") 2>&1

if ! python3 -c "import deepspeed, papermill, ipykernel" 2>/dev/null; then
  [ -d .whl ] || { echo "no .whl/ wheels: run experiments/gpu_wheels.sh on a machine with PyPI and carry .whl"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}        # hybridslm from this checkout (not pip-installed there)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 WANDB_MODE=offline
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # never NVLink multicast
export TRITON_CACHE_AUTOTUNING=1   # keep Triton's autotune choices on disk: only the first process pays the ~30 s/step
START=$(date +%s); BUDGET=${RUN2GPU_BUDGET_S:-3600}   # whole-script budget; each run gets min(900 s, what is left)
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi (CPU dry run?)"
python3 -c "import torch, deepspeed, transformers, papermill; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'papermill', papermill.__version__, 'gpus', torch.cuda.device_count())" || exit 1

COMMON=(-k python3 -p preset 125m -p seq_len 2048 -p micro_batch 4 -p grad_accum 4 -p lr 6e-4 -p warmup 10
        -p max_steps 30 -y 'time_budget_min: null' -p eval_every 0 -p eval_batches 4 -p final_eval_batches 8
        -p save_every 0 -p require_beat_unigram False -p log_to tensorboard -p sample_tokens 40)
read -r -a EXTRA <<< "${RUN2GPU_EXTRA:-}"   # CPU dry run of this script: tiny overrides
run() {  # name, extra papermill args...
  local name=$1; shift
  local t=$(( BUDGET - ($(date +%s) - START) - 20 )); [ "$t" -gt 900 ] && t=900
  [ "$t" -gt 30 ] || { echo "=== $name skipped: ${t}s left of the ${BUDGET}s budget"; return; }
  echo "=== $name: $* ($(date -u +%T))"; mkdir -p "$DEST/$name"
  timeout "$t" papermill experiments/train.ipynb "$DEST/$name/train.ipynb" "${COMMON[@]}" -p run_name "$name" \
      -p out_dir "$DEST/$name" "$@" "${EXTRA[@]}" --log-output --no-progress-bar 2>&1 | grep -v "^\s*$" | grep -vi "warn" | tail -n 40
  echo "=== $name exit ${PIPESTATUS[0]} ($(date -u +%T))"
}
run 1gpu_zero2 -p num_gpus 1 -p zero_stage 2 -p master_port 29511
run 2gpu_zero2 -p num_gpus 2 -p zero_stage 2 -p master_port 29512
run 2gpu_zero3 -p num_gpus 2 -p zero_stage 3 -p master_port 29513

python3 - "$DEST" <<'EOF'
import json, sys
from pathlib import Path
d = Path(sys.argv[1]); runs = {}
for name in ('1gpu_zero2', '2gpu_zero2', '2gpu_zero3'):
    f = d / name / 'metrics.json'
    if not f.exists(): runs[name] = {'error': f'no {f} (see run_2gpu.log)'}; continue
    m = json.loads(f.read_text())
    runs[name] = {k: m.get(k) for k in ('num_gpus', 'zero_stage', 'steps', 'tokens', 'train_time_s', 'steady_tokens_per_s',
                                        'steady_tokens_per_s_per_device', 'mfu', 'params', 'flops_per_token', 'val_ppl',
                                        'unigram_ppl', 'device_name', 'torch', 'date')}
base = runs['1gpu_zero2'].get('steady_tokens_per_s')
for name in ('2gpu_zero2', '2gpu_zero3'):
    r = runs[name]
    if base and r.get('steady_tokens_per_s_per_device'):
        r['scaling_efficiency_vs_1gpu_zero2'] = r['steady_tokens_per_s_per_device'] / base
        r['speedup_vs_1gpu'] = r['steady_tokens_per_s'] / base
out = {'what': '125m preset, seq 2048, micro-batch 4, accumulation 4 per GPU, bf16 autocast (fp32 master + SSM params), '
               'DeepSpeed 0.19.8; steady-state = median tokens/s over steps after the first 3', 'runs': runs}
(d / 'results_2gpu.json').write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
EOF

if [ -n "${OUT:-}" ]; then
  for name in 1gpu_zero2 2gpu_zero2 2gpu_zero3; do
    cp "$DEST/$name/train.ipynb" "$OUT/train_$name.ipynb" 2>/dev/null
    cp "$DEST/$name/loss.png" "$OUT/loss_$name.png" 2>/dev/null
  done
  cp "$DEST/results_2gpu.json" "$OUT/" 2>/dev/null
  cp "$LOG" "$OUT/" 2>/dev/null
fi
