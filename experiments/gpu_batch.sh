#!/usr/bin/env bash
# The GPU benchmarks, scaling runs and ablation sweeps, batched for a GPU host without network access.
# Run from the repo root of a checkout copied to that host together with the wheel folders built beforehand on a machine
# with PyPI (.whl/: experiments/gpu_wheels.sh; .whlgpu/: mamba_ssm, liger-kernel 0.8.5, torchao, nbdev/papermill for the
# GPU image's Python) and, for the LM ablation, .gpudata/corpus (pretraining shards).
#
#     bash experiments/gpu_batch.sh train2gpu [quant]   # 2 GPUs: experiments/run_2gpu.sh, then the CUDA quant bench
#     bash experiments/gpu_batch.sh gputests            # 1 GPU: the notebooks' `#| gpu` cells (nbdev_test --flags gpu)
#     bash experiments/gpu_batch.sh docmask           # 1 GPU: packed-row and convert GPU checks, the document-masking cost at 1.3b
#     bash experiments/gpu_batch.sh ablate [mqar|lm|both]  # all GPUs: the MQAR grid and/or the LM comparison, resumable
#     bash experiments/gpu_batch.sh benchgpu            # 1 GPU: the final bench_gpu table (+ compiled at micro-batch 8)
#     bash experiments/gpu_batch.sh benchfinal          # 1 GPU: mamba_ssm, ours compiled, ours eager
#     bash experiments/gpu_batch.sh benchall            # 1 GPU: ours compiled, mamba_ssm, HF Llama (compiled decode)
#     bash experiments/gpu_batch.sh mb8                 # 1 GPU: ours compiled and mamba_ssm trained at micro-batch 4 and 8
#     bash experiments/gpu_batch.sh levers2             # 1 GPU: experiments/bench_levers.py (the training levers)
#     bash experiments/gpu_batch.sh levers              # 2 GPUs: the bench with the compiled variant + training levers
#     bash experiments/gpu_batch.sh final               # 1-GPU DeepSpeed baseline, a GPU demo model and its quant bench
#
# Everything is written under $OUT (or /tmp/gpu_out) as it finishes, so a batch stopped early still leaves what
# completed. BUDGET_S (default 3600) is the wall-clock budget of the whole batch: each step gets a deadline inside it, so
# a step is stopped by its own timeout and the batch still packs and reports what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
START=$(date +%s); BUDGET_S=${BUDGET_S:-3600}
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# one pip call over both wheel folders, each wheel once (a file in both would make pip refuse the whole set, and a
# second --target install replaces the first one's bin/, console scripts included)
WHEELS=$(ls .whl/*.whl .whlgpu/*.whl 2>/dev/null | awk -F/ '!seen[$NF]++')
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 WANDB_MODE=offline MPLBACKEND=Agg
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TRITON_CACHE_AUTOTUNING=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, mamba_ssm, papermill; print('torch', torch.__version__, 'transformers', transformers.__version__, 'mamba_ssm', mamba_ssm.__version__, 'gpus', torch.cuda.device_count())" 2>&1 | tail -1

quant() {   # the CUDA quantization bench on the 125m checkpoint trained by the 1-GPU run (if this machine made one)
  local base=papermill_runs/train_2gpu/1gpu_zero2/checkpoint t=$(( $(left) - 10 ))
  [ -f "$base/config.json" ] || base=papermill_runs/demo/checkpoint
  [ "$t" -gt 60 ] || { echo "quant: skipped, only ${t}s left"; return; }
  echo "=== quant on $base (${t}s) $(date -u +%T)"
  CUDA_VISIBLE_DEVICES=${1:-0} timeout "$t" python3 -m papermill experiments/bench_quant.ipynb "$OUT/bench_quant_cuda.ipynb" \
      -k python3 --no-progress-bar -p device cuda -p base_model "$base" -p out_dir "$OUT/bench_quant" 2>&1 | grep -v -i warn | tail -n 15
  echo "=== quant exit ${PIPESTATUS[0]} $(date -u +%T)"
}

bench_table() {   # bench_table TARBALL DIR MARGIN_S ARGS...: one bench_gpu.ipynb run into $OUT/DIR, returned as TARBALL.tgz
  local tarball=$1 dir=$2 margin=$3; shift 3
  mkdir -p "$OUT/$dir"
  timeout $(( $(left) - margin )) python3 -m papermill experiments/bench_gpu.ipynb "$OUT/$dir/bench_gpu.ipynb" -k python3 \
      --no-progress-bar -p out_dir "$OUT/$dir" "$@" > "$OUT/$dir.log" 2>&1
  echo "bench exit $? $(date -u +%T)" >> "$OUT/$dir.log"
  tar czf "$OUT/$tarball.tgz" -C "$OUT" "$dir" "$dir.log"; rm -rf "$OUT/$dir"; tail -n 5 "$OUT/$dir.log"
}

case "${1:-}" in
  train2gpu)   # everything is packed as one tarball (plus the log), the results to copy back
    OUT= RUN2GPU_BUDGET_S=$(( $(left) - 40 )) bash experiments/run_2gpu.sh > "$OUT/run_2gpu.log" 2>&1; tail -n 30 "$OUT/run_2gpu.log"
    [ "${2:-}" = quant ] && quant 0
    tar czf "$OUT/train2gpu.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' --exclude='tb' \
        papermill_runs/train_2gpu papermill_runs/bench_quant 2>/dev/null ;;
  benchgpu)    # the final same-process table (1 GPU): ours eager, mamba_ssm, Llama, ours compiled; bf16 SSM state;
               # one profiled training step each; then, if time is left, ours compiled at micro-batch 8. One tarball.
    mkdir -p "$OUT/bench_gpu" "$OUT/compiled_mb8"
    timeout $(( $(left) - 150 )) python3 -m papermill experiments/bench_gpu.ipynb "$OUT/bench_gpu/bench_gpu.ipynb" -k python3 \
        --no-progress-bar -p ssm_state_dtype bfloat16 -p system_timeout_s 200 -p profile True \
        -y 'systems: [hybridslm, mamba_ssm, hf_llama, hybridslm_compiled]' -p out_dir "$OUT/bench_gpu" > "$OUT/bench_gpu.log" 2>&1
    echo "bench exit $? $(date -u +%T)" >> "$OUT/bench_gpu.log"
    t=$(( $(left) - 25 ))
    if [ "$t" -gt 100 ]; then
      timeout "$t" python3 -m papermill experiments/bench_gpu.ipynb "$OUT/compiled_mb8/bench_gpu.ipynb" -k python3 --no-progress-bar \
        -y 'prefill_lens: []' -y 'decode_batches: []' -y 'systems: [hybridslm_compiled]' -p compiled_micro_batch 8 \
        -p out_dir "$OUT/compiled_mb8" > "$OUT/compiled_mb8.log" 2>&1; echo "mb8 exit $?" >> "$OUT/compiled_mb8.log"
    fi
    tar czf "$OUT/benchgpu.tgz" -C "$OUT" bench_gpu compiled_mb8 bench_gpu.log $(cd "$OUT" && ls compiled_mb8.log 2>/dev/null)
    rm -rf "$OUT/bench_gpu" "$OUT/compiled_mb8"; tail -n 5 "$OUT/bench_gpu.log" ;;
  benchfinal)  # the same-process table, short: mamba_ssm, ours compiled, ours eager
    bench_table benchfinal bench_gpu 20 -p ssm_state_dtype bfloat16 -p system_timeout_s 240 -p profile True \
        -y 'systems: [mamba_ssm, hybridslm_compiled, hybridslm]' ;;
  benchall)    # the final same-process table with all peers (1 GPU): ours compiled first (its numbers matter most), then
               # mamba_ssm and HF Llama (HF's compiled static-cache decode); bf16 SSM state; one profiled step each
    bench_table benchall bench_gpu 15 -p ssm_state_dtype bfloat16 -p system_timeout_s 280 -p profile True \
        -y 'systems: [hybridslm_compiled, mamba_ssm, hf_llama]' ;;
  mb8)         # the micro-batch lever offered to mamba_ssm too: ours compiled and mamba_ssm trained at 4 and 8, one process
    bench_table mb8 bench_mb8 15 -y 'prefill_lens: []' -y 'decode_batches: []' -p extra_micro_batch 8 \
        -p system_timeout_s 250 -y 'systems: [mamba_ssm, hybridslm_compiled]' ;;
  levers2)     # experiments/bench_levers.py: the training levers (liger, micro-batch, accumulation, checkpointing, fp8)
               # and a kernel profile of the decode step, in one process on one GPU (.whlgpu carries liger-kernel)
    mkdir -p "$OUT/levers2"
    python3 experiments/bench_levers.py ${LEVER_CASES:+--cases $LEVER_CASES} --out "$OUT/levers2" --budget-s $(( $(left) - 30 )) > "$OUT/levers2.log" 2>&1
    echo "levers exit $?" >> "$OUT/levers2.log"; grep '^{' "$OUT/levers2.log" | cut -c1-300 ;;
  levers)      # the GPU performance levers on 2 GPUs at once. GPU 0: the same-process table (ours eager, mamba_ssm, Llama, ours compiled),
               # with a profile of one training step each. GPU 1: the training levers, one papermill run each, and the
               # 125m shape of the scaling runs through the plain single-process loop. Results as two tarballs.
    mkdir -p "$OUT/bench_gpu" "$OUT/levers"
    ( CUDA_VISIBLE_DEVICES=0 timeout $(( $(left) - 30 )) python3 -m papermill experiments/bench_gpu.ipynb "$OUT/bench_gpu/bench_gpu.ipynb" \
        -k python3 --no-progress-bar -p ssm_state_dtype bfloat16 -p system_timeout_s 200 -p profile True \
        -y 'systems: [hybridslm, mamba_ssm, hf_llama, hybridslm_compiled]' -p out_dir "$OUT/bench_gpu" > "$OUT/bench_gpu.log" 2>&1
      echo "bench exit $? $(date -u +%T)" >> "$OUT/bench_gpu.log" ) &
    ( export CUDA_VISIBLE_DEVICES=1
      lever() { local name=$1; shift; mkdir -p "$OUT/levers/$name"; echo "=== $name $(date -u +%T)"
        timeout $(( $(left) - 30 )) python3 -m papermill experiments/bench_gpu.ipynb "$OUT/levers/$name/bench_gpu.ipynb" -k python3 \
          --no-progress-bar -y 'prefill_lens: []' -y 'decode_batches: []' -p system_timeout_s 200 -p out_dir "$OUT/levers/$name" "$@" 2>&1 \
          | grep -v -i warn | tail -n 4; }
      lever 125m_plain -p preset 125m -p vocab_size 8192 -y 'systems: [hybridslm]' -p profile True
      lever compiled_mb8 -y 'systems: [hybridslm_compiled]' -p compiled_micro_batch 8
      lever compiled_mb8_chunk -y 'systems: [hybridslm_compiled]' -p compiled_micro_batch 8 -p loss_chunk_tokens 8192
      lever eager_mb4_chunk -y 'systems: [hybridslm]' -p loss_chunk_tokens 8192 ) > "$OUT/levers.log" 2>&1 &
    wait
    tar czf "$OUT/bench.tgz" -C "$OUT" bench_gpu bench_gpu.log; tar czf "$OUT/levers.tgz" -C "$OUT" levers levers.log
    rm -rf "$OUT/bench_gpu" "$OUT/levers"
    tail -n 12 "$OUT/bench_gpu.log"; cat "$OUT/levers.log" | tail -n 30 ;;
  mqarstep)   # GPU 0: where an MQAR run's time goes (experiments/bench_mqar_step.py: step times, kernel profile, GPU sharing);
               # GPU 1: a learning-rate probe of the attention patterns at d_model 128 (full protocol, early stop);
               # then the MQAR notebook's GPU cells on GPU 0. Results as one tarball.
    mkdir -p "$OUT/step"
    ( CUDA_VISIBLE_DEVICES=0 timeout $(( $(left) - 120 )) python3 experiments/bench_mqar_step.py --out "$OUT/step" \
        --parts ${STEP_PARTS:-profile,steps,share} > "$OUT/step.log" 2>&1; echo "step exit $?" >> "$OUT/step.log"
      t=$(( $(left) - 25 )); [ "$t" -gt 30 ] && CUDA_VISIBLE_DEVICES=0 timeout "$t" nbdev_test --flags gpu --n_workers 1 \
        --do_print --path nbs/62_ablate.fast.ipynb > "$OUT/gputest_62.log" 2>&1; echo "gputest exit $?" >> "$OUT/gputest_62.log" ) &
    python3 experiments/sweep_ablate.py --task mqar --name probe_attn --gpus 1 --jobs-per-gpu 2 --no-report \
        --patterns ${PROBE_PATTERNS:-AA,AAAA,MAMM} -s widths=128 -s lrs=${PROBE_LRS:-3e-4,1e-3} -s seeds=0 \
        --deadline-s $(( $(left) - 30 )) > "$OUT/probe.log" 2>&1; echo "probe exit $?" >> "$OUT/probe.log"
    wait
    tar czf "$OUT/mqarstep.tgz" --exclude='*.pt' -C "$OUT" step step.log probe.log $(cd "$OUT" && ls gputest_62.log 2>/dev/null)
    tar czf "$OUT/probe_attn.tgz" papermill_runs/ablate/probe_attn 2>/dev/null
    tail -n 40 "$OUT/step.log"; tail -n 12 "$OUT/probe.log" ;;
  gputests)   # the notebooks' GPU cells (`#| gpu`): the captured training step and fit(cuda_graphs=True) against eager,
               # then every other notebook's GPU cells, one notebook at a time, each with its own deadline
    for nb in nbs/26_train.graphs.ipynb nbs/22_train.loop.ipynb; do
      t=$(( $(left) - 20 )); [ "$t" -gt 30 ] || break
      echo "=== $nb $(date -u +%T)"; timeout "$t" nbdev_test --flags gpu --n_workers 1 --path "$nb" > "$OUT/gputest_$(basename $nb .ipynb).log" 2>&1
      echo "exit $?"; tail -n 5 "$OUT/gputest_$(basename $nb .ipynb).log"
    done
    t=$(( $(left) - 20 )); [ "$t" -gt 60 ] && timeout "$t" nbdev_test --flags gpu --n_workers 1 > "$OUT/gputest_all.log" 2>&1; tail -n 8 "$OUT/gputest_all.log" ;;
  docmask)    # 1 GPU: the `#| gpu` cells of the attention, Mamba-2, model and convert notebooks (packed rows on the kernel
              # paths, mamba_ssm's MambaLMHeadModel against the converter), then what document masking costs a 1.3b step
    for nb in nbs/02_attention.ipynb nbs/03_mamba2.ipynb nbs/04_model.ipynb nbs/43_convert.ipynb; do
      t=$(( $(left) - 240 )); [ "$t" -gt 30 ] || break
      echo "=== $nb $(date -u +%T)"; timeout "$t" nbdev_test --flags gpu --n_workers 1 --path "$nb" > "$OUT/gputest_$(basename $nb .ipynb).log" 2>&1
      echo "exit $?"; tail -n 5 "$OUT/gputest_$(basename $nb .ipynb).log"
    done
    timeout $(( $(left) - 15 )) python3 experiments/bench_doc_mask.py --preset 1.3b --out "$OUT/doc_mask_bench" 2>&1 | tail -n 8 ;;
  ablate)     # $2 = mqar (default): the MQAR grid of the published protocol on every GPU of the host; lm: the LM
               # comparison on the corpus in .gpudata/corpus (a folder of .jsonl[.gz]/.txt files), tokenized once first;
               # both: the two sweeps at the same time, each with its own runs per GPU (MQAR_JOBS, LM_JOBS; default 2
               # and 1). A sweep cut off by BUDGET_S resumes where it stopped when the same command runs again
               # (finished runs are kept under papermill_runs/ablate/; copy that folder back between hosts)
    what=${2:-mqar}
    mqar_part() {
      python3 experiments/sweep_ablate.py --task mqar --gpus all --jobs-per-gpu "${MQAR_JOBS:-2}" ${MQAR_ARGS:-} \
          --deadline-s "$(( $(left) - 30 ))" > "$OUT/sweep_mqar.log" 2>&1
      echo "mqar sweep exit $? (3: incomplete, run again)" >> "$OUT/sweep_mqar.log"
    }
    lm_part() {
      TOKENIZERS_PARALLELISM=true python3 -c "from hybridslm.research.ablate import lm_data; d = lm_data('$PWD/.gpudata/corpus', 512); \
          print(f\"{d['n_train_tokens']:,} train / {d['n_val_tokens']:,} val tokens\")" 2>&1 | grep -v Warn | tail -n 2
      python3 experiments/sweep_ablate.py --task lm --gpus all --jobs-per-gpu "${LM_JOBS:-2}" ${LM_ARGS:-} \
          --deadline-s "$(( $(left) - 30 ))" -p device=cuda -p lm_source=.gpudata/corpus > "$OUT/sweep_lm.log" 2>&1
      echo "lm sweep exit $? (3: incomplete, run again)" >> "$OUT/sweep_lm.log"
    }
    case "$what" in
      mqar) mqar_part ;;
      lm) lm_part ;;
      both) LM_JOBS=${LM_JOBS:-1} lm_part & mqar_part; wait ;;
      *) echo "ablate: expected mqar, lm or both, got '$what'"; exit 2 ;;
    esac
    tar czf "$OUT/ablate.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoint*' --exclude='tb' papermill_runs/ablate 2>/dev/null
    tail -n 25 "$OUT"/sweep_*.log ;;
  final)   # the 1-GPU DeepSpeed baseline, then a demo model trained on the GPU and the quantization bench on it (GPU 0).
           # Results as a few tarballs under $OUT, easy to copy back.
    W=papermill_runs; t=$(( $(left) - 25 ))
    tarit() { tar czf "$OUT/$1.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='checkpoints' --exclude='tb' "${@:2}" 2>/dev/null; }
    mkdir -p $W/train_2gpu/1gpu_zero2 $W/demo_gpu $W/bench_quant   # papermill does not create an output notebook's folder
    ( export CUDA_VISIBLE_DEVICES=0
      echo "=== 1gpu_zero2 $(date -u +%T)"
      timeout 240 papermill experiments/train.ipynb $W/train_2gpu/1gpu_zero2/train.ipynb -k python3 --no-progress-bar --log-output \
        -p preset 125m -p seq_len 2048 -p micro_batch 4 -p grad_accum 4 -p lr 6e-4 -p warmup 10 -p max_steps 16 \
        -y 'time_budget_min: null' -p eval_every 0 -p eval_batches 4 -p final_eval_batches 8 -p save_every 0 \
        -p require_beat_unigram False -p log_to tensorboard -p sample_tokens 40 -p num_gpus 1 -p zero_stage 2 \
        -p master_port 29511 -p run_name 1gpu_zero2 -p out_dir $W/train_2gpu/1gpu_zero2 2>&1 | grep -E "steps,|perplexity|Error|error" | tail -5
      tarit train1 $W/train_2gpu
      echo "=== demo on GPU $(date -u +%T)"
      timeout 200 papermill experiments/train.ipynb $W/demo_gpu/train.ipynb -k python3 --no-progress-bar -p preset demo \
        -p device cuda -p micro_batch 32 -p warmup 100 -p max_steps 20000 -p time_budget_min 1.5 -p eval_every 500 \
        -p run_name demo_gpu -p out_dir $W/demo_gpu 2>&1 | grep -E "steps,|perplexity|Error|error" | tail -5
      tarit demo $W/demo_gpu
      if [ -f $W/demo_gpu/checkpoint/config.json ]; then
        t2=$(( $(left) - 15 )); echo "=== quant ${t2}s $(date -u +%T)"
        timeout "$t2" papermill experiments/bench_quant.ipynb $W/bench_quant/bench_quant_cuda.ipynb -k python3 --no-progress-bar \
          -p device cuda -p base_model $W/demo_gpu/checkpoint -p out_dir $W/bench_quant 2>&1 | grep -E "^\|" | tail -8
        tarit quant $W/bench_quant
      fi ) &
    wait ;;
  *) echo "usage: $0 gputests|docmask|train2gpu|ablate|benchgpu|benchfinal|benchall|mb8|levers|levers2|final [quant]"; exit 2 ;;
esac
echo "done in $(( $(date +%s) - START ))s"
