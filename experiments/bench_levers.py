"""GPU training and decode levers, each measured in one process on one GPU after `bench_gpu.ipynb` (which holds
the same-process peer table). One JSON line per case on stdout and in `<out>/levers.jsonl`; a case that fails or
does not fit is recorded with its error, and the next one runs.

    python experiments/bench_levers.py --out /tmp/levers [--cases compiled_mb4,liger_mb4,...] [--budget-s SECONDS]

Cases (1.3b preset, sequence 2048, bf16 autocast, fp32 master weights, fused AdamW, `compile_blocks` unless named):
  compiled_mb4      the baseline of this script (= bench_gpu's hybridslm_compiled)
  liger_mb4         + liger-kernel's fused linear + cross-entropy (the logits never exist)
  compiled_mb8      micro-batch 8
  ckpt_mb16         micro-batch 16 with every block under activation checkpointing
  accum4_mb4        4 micro-batches per optimizer step (production runs accumulate 16): the optimizer amortised
  fp8_mb4           torchao float8 training (dynamic tensorwise scaling) of every block Linear; a different numeric
                    recipe from the bf16 peers, reported apart
  decode_profile    kernel time of one compiled decode step at batch 1 (inductor step, no graph), by category
  noconvfuse_mb4    compiled, but the causal conv left to F.conv1d (isolates the fused-conv lever)
  sdpa_<backend>_mb4  compiled, attention forced to one SDPA backend (flash, efficient, cudnn)
  decode_<w>        batch-1 tokens/s of the compiled, captured step with bf16, int8 or int4 weight-only weights
  decode_cdt_bs1    the same (bf16) with inductor's coordinate_descent_tuning: batch-1 matmuls decomposed into
                    reductions that fuse with their neighbours, block sizes tuned; checked against the plain step
  decode_cdt_int8_bs1  int8 weight-only with the same option
  decode_profile_cdt  kernel profile of the compiled step without and with that option (batch 1)
  decode_profile_bs32 kernel profile of the eager and compiled steps at batch 32
  decode_cdt_allbf16_bs{1,32}  as decode_cdt_bs{1,32}, but A_log, D and dt_bias cast to bf16 too (bench_gpu's cast)
  decode_profile_bs32_cdt  kernel profile at batch 32 of the compiled step without and with coordinate-descent tuning
  decode_bf16_bs32 / decode_cdt_bs32 / decode_maxautotune_bs32  batch-32 tokens/s, compiled with inductor's defaults,
                    with coordinate-descent tuning, and with max_autotune GEMM templates as well
  ("compiled" means inductor's defaults here; StaticDecoder's own CUDA default is coordinate-descent tuning)
"""
import argparse, gc, json, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hybridslm.model.config import HybridConfig
from hybridslm.model import HybridForCausalLM, compile_blocks
from hybridslm.model.fastdecode import StaticDecoder

ap = argparse.ArgumentParser()
ap.add_argument('--out', required=True)
ap.add_argument('--cases', default='compiled_mb4,liger_mb4,compiled_mb8,accum4_mb4,ckpt_mb16,fp8_mb4,decode_profile')
ap.add_argument('--preset', default='1.3b')
ap.add_argument('--seq', type=int, default=2048)
ap.add_argument('--iters', type=int, default=8)
ap.add_argument("--budget-s", type=float, default=3600)
ap.add_argument('--model-overrides', default='{}', help='JSON HybridConfig overrides (the CPU smoke run shrinks the model)')
args = ap.parse_args()
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'       # CPU: a smoke run of this script's plumbing only
out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
START, PEAK = time.time(), 989e12
cfg = HybridConfig.from_preset(args.preset, ssm_state_dtype='bfloat16', **json.loads(args.model_overrides))
N_ATTN = len(cfg.attn_layer_idx)
print(torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu', 'torch', torch.__version__, flush=True)


def sync():
    if DEV == 'cuda': torch.cuda.synchronize()


def category(name):
    n = name.lower()
    if n.startswith('nvjet') or 'gemm' in n or 'gemv' in n or 'cutlass' in n or 'splitk' in n: return 'matmul'
    if 'multi_tensor' in n: return 'optimizer'
    if n.startswith('triton_'): return 'inductor_fused'
    if n.startswith('_') and 'kernel' in n: return 'mamba_ssm_triton'
    if 'liger' in n or 'cross_entropy' in n or 'element_mul' in n: return 'loss'
    if 'sdpa' in n or 'flash' in n or 'attention' in n: return 'attention'
    return 'other'


def kernel_breakdown(prof_obj, steps=1):
    cats, n = {}, 0
    for e in prof_obj.key_averages():
        if e.self_device_time_total <= 0 or e.key.startswith(('aten::', 'autograd::', 'Optimizer', 'cuda')): continue
        c = category(e.key); cats[c] = cats.get(c, 0) + e.self_device_time_total / 1e3 / steps; n += e.count
    return {k: round(v, 3) for k, v in sorted(cats.items(), key=lambda x: -x[1])}, n / steps


def train_case(name, mb, liger=False, ckpt=False, accum=1, fp8=False, conv_shifts=True, sdpa=None):
    import hybridslm.model.mamba2
    hybridslm.model.mamba2._CONV_AS_SHIFTS = conv_shifts
    try: return _train_case(name, mb, liger, ckpt, accum, fp8, sdpa)
    finally: hybridslm.model.mamba2._CONV_AS_SHIFTS = True      # also after a failing case: the next one gets the default


def _train_case(name, mb, liger, ckpt, accum, fp8, sdpa):
    torch.manual_seed(0)
    if DEV == 'cuda': torch.cuda.reset_peak_memory_stats()
    model = HybridForCausalLM(cfg).to(DEV)
    if fp8:
        from torchao.float8 import convert_to_float8_training
        convert_to_float8_training(model.model, module_filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
                                   and m.in_features % 16 == 0 and m.out_features % 16 == 0)
    if ckpt: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
    compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=DEV == 'cuda')
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    ids = torch.randint(0, cfg.vocab_size, (mb, args.seq), device=DEV)
    if liger:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
        flce = LigerFusedLinearCrossEntropyLoss()
    def loss_of():
        with torch.autocast(DEV, dtype=torch.bfloat16):
            if not liger: return model(ids, labels=ids, use_cache=False).loss
            h = model.model(ids, use_cache=False).last_hidden_state
            return flce(model.lm_head.weight, h[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    def step():
        if sdpa is not None:
            from torch.nn.attention import sdpa_kernel, SDPBackend
            with sdpa_kernel([getattr(SDPBackend, sdpa)]): return _step()
        return _step()
    def _step():
        for _ in range(accum):
            loss = loss_of(); (loss / accum).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    t0 = time.perf_counter()
    for _ in range(3): loss = step()
    sync(); warm = time.perf_counter() - t0; t = time.perf_counter()
    for _ in range(args.iters): loss = step()
    sync(); dt = (time.perf_counter() - t) / args.iters
    tok_s = accum * mb * args.seq / dt
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA if DEV == "cuda" else ProfilerActivity.CPU]) as p:
        step(); sync()
    cats, n_kernels = kernel_breakdown(p)
    flops_tok = 6 * n_params + 12 * N_ATTN * cfg.d_model * args.seq
    r = dict(case=name, micro_batch=mb, accum=accum, train_tok_s=round(tok_s, 1), mfu=round(tok_s * flops_tok / PEAK, 4),
             peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEV == 'cuda' else None, loss=round(loss.item(), 4),
             warmup_s=round(warm, 1), gpu_ms_per_step=round(sum(cats.values()), 2), kernels_per_step=n_kernels,
             gpu_ms_by_category=cats)
    del model, opt; return r


@torch.no_grad()
def decode_profile(B=1, prompt=128, steps=32, variants=('eager', 'compiled')):
    "Kernel time per token of the decode step by category, for each variant: eager, compiled, cdt (compiled with inductor's coordinate-descent tuning)."
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).to(DEV).to(torch.bfloat16).eval()
    r = dict(case=f"decode_profile_bs{B}" + ('' if tuple(variants) == ('eager', 'compiled') else '_' + '_'.join(variants)))
    for k in variants:
        dec = StaticDecoder(model, B, prompt + 2 * steps + 8, use_graph=DEV == 'cuda', compile=k != 'eager',
                            compile_options=CDT if k == 'cdt' else {})
        ids = torch.randint(0, cfg.vocab_size, (B, prompt), device=DEV)
        dec.generate(ids, 8)                                   # capture (and compile)
        dec.prefill(ids)
        sync(); t = time.perf_counter()
        for _ in range(steps): dec.graph.replay() if dec.use_graph else dec.step_fn()
        sync(); r[f"{k}_graph_ms_per_token"] = round((time.perf_counter() - t) / steps * 1e3, 3)
        from torch.profiler import profile, ProfilerActivity
        dec.prefill(ids)
        with profile(activities=[ProfilerActivity.CUDA if DEV == "cuda" else ProfilerActivity.CPU]) as p:      # the same step, launched without the graph
            for _ in range(steps): dec.step_fn()
            sync()
        cats, n = kernel_breakdown(p, steps)
        r[f'{k}_kernel_ms_per_token'] = round(sum(cats.values()), 3); r[f'{k}_kernels_per_token'] = n
        r[f'{k}_kernel_ms_by_category'] = cats
        r[f'{k}_top_kernels'] = top_kernels(p, steps)
        del dec
    w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    r['weight_gb'] = round(w_bytes / 1e9, 3)
    if DEV != 'cuda': del model; return r
    x = torch.empty(int(2e9), dtype=torch.uint8, device=DEV); y = torch.empty_like(x)
    y.copy_(x); sync(); t = time.perf_counter()
    for _ in range(5): y.copy_(x)
    sync(); bw = 5 * 2 * 2e9 / (time.perf_counter() - t)        # read + write bytes per second
    r['copy_bandwidth_tb_s'] = round(bw / 1e12, 2); r['weight_read_floor_ms'] = round(w_bytes / bw * 1e3, 3)
    del x, y, model; return r


def top_kernels(prof_obj, steps=1, top=12):
    ev = [e for e in prof_obj.key_averages() if e.self_device_time_total > 0 and not e.key.startswith(('aten::', 'autograd::', 'cuda'))]
    ev.sort(key=lambda e: -e.self_device_time_total)
    return [(e.key[:70], round(e.self_device_time_total / 1e3 / steps, 4), e.count // steps) for e in ev[:top]]


@torch.no_grad()
def decode_case(scheme, B=1, prompt=128, gen=256, options={}, tag='', all_bf16=False):
    "Tokens/s of the compiled, graph-captured step with bf16 weights or weight-only int8/int4 (torchao); `options`: inductor's."
    from hybridslm.post.quantize import to_bf16, quantize_model, model_nbytes
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).to(DEV)
    model = (model.to(torch.bfloat16) if all_bf16 else to_bf16(model)).eval()   # all_bf16: A_log, D, dt_bias too (as bench_gpu)
    if scheme != 'bf16': quantize_model(model, scheme)
    dec = StaticDecoder(model, B, prompt + gen, use_graph=DEV == 'cuda', compile=True, compile_options=options)
    ids = torch.randint(0, cfg.vocab_size, (B, prompt), device=DEV)
    t = time.perf_counter(); first = dec.generate(ids, gen); sync(); first_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(2): dec.generate(ids, gen)
    sync(); tok_s = 2 * B * gen / (time.perf_counter() - t)
    r = dict(case=f'decode_{scheme}{tag}_bs{B}', tok_s=round(tok_s, 1), first_call_s=round(first_s, 1),
             weight_gb=round(model_nbytes(model) / 1e9, 3))
    if options:          # the tuned step must compute what the plain compiled one does: teacher-forced on its greedy text
        ref_dec = StaticDecoder(model, B, prompt + gen, use_graph=DEV == 'cuda', compile=True, compile_options={})
        ref = ref_dec.generate(ids, gen)
        lr, lc = ref_dec.score(ids, ref), dec.score(ids, ref)
        r.update(greedy_agreement=round((ref == first).float().mean().item(), 4),
                 teacher_forced_top1_agreement=round((lr.argmax(-1) == lc.argmax(-1)).float().mean().item(), 4),
                 teacher_forced_max_abs_logit_diff=round((lr - lc).abs().max().item(), 4), logit_abs_max=round(lr.abs().max().item(), 3))
        del ref_dec
    del dec, model; return r


CDT = {'coordinate_descent_tuning': True}   # inductor: batch-1 matmuls become fusable reductions, block sizes tuned
CASES = {'compiled_mb4': lambda: train_case('compiled_mb4', 4), 'liger_mb4': lambda: train_case('liger_mb4', 4, liger=True),
         'compiled_mb8': lambda: train_case('compiled_mb8', 8), 'accum4_mb4': lambda: train_case('accum4_mb4', 4, accum=4),
         'ckpt_mb16': lambda: train_case('ckpt_mb16', 16, ckpt=True), 'fp8_mb4': lambda: train_case('fp8_mb4', 4, fp8=True),
         'decode_profile': decode_profile,
         'noconvfuse_mb4': lambda: train_case('noconvfuse_mb4', 4, conv_shifts=False),
         'sdpa_flash_mb4': lambda: train_case('sdpa_flash_mb4', 4, sdpa='FLASH_ATTENTION'),
         'sdpa_efficient_mb4': lambda: train_case('sdpa_efficient_mb4', 4, sdpa='EFFICIENT_ATTENTION'),
         'sdpa_cudnn_mb4': lambda: train_case('sdpa_cudnn_mb4', 4, sdpa='CUDNN_ATTENTION'),
         'decode_bf16': lambda: decode_case('bf16'), 'decode_int8': lambda: decode_case('int8'),
         'decode_int4': lambda: decode_case('int4'),
         'decode_cdt_bs1': lambda: decode_case('bf16', options=CDT, tag='_cdt'),
         'decode_cdt_int8_bs1': lambda: decode_case('int8', options=CDT, tag='_cdt'),
         'decode_profile_cdt': lambda: decode_profile(1, variants=('compiled', 'cdt')),
         'decode_profile_bs32': lambda: decode_profile(32),
         'decode_bf16_bs32': lambda: decode_case('bf16', B=32),
         'decode_cdt_bs32': lambda: decode_case('bf16', B=32, options=CDT, tag='_cdt'),
         'decode_cdt_allbf16_bs32': lambda: decode_case('bf16', B=32, options=CDT, tag='_cdt_allbf16', all_bf16=True),
         'decode_cdt_allbf16_bs1': lambda: decode_case('bf16', B=1, options=CDT, tag='_cdt_allbf16', all_bf16=True),
         'decode_profile_bs32_cdt': lambda: decode_profile(32, variants=('compiled', 'cdt')),
         'decode_maxautotune_bs32': lambda: decode_case('bf16', B=32, options={'max_autotune': True, **CDT}, tag='_maxautotune')}
for name in args.cases.split(','):
    left = args.budget_s - (time.time() - START)
    if left < 60: r = dict(case=name, skipped=f'{left:.0f} s of the budget left')
    else:
        t = time.time()
        try: r = CASES[name]()
        except Exception as e:
            import traceback; traceback.print_exc(); r = dict(case=name, error=f'{type(e).__name__}: {e}'[:400])
        r['case_s'] = round(time.time() - t, 1)
    gc.collect(); torch.cuda.empty_cache() if DEV == 'cuda' else None
    print(json.dumps(r), flush=True)
    with open(out / 'levers.jsonl', 'a') as f: f.write(json.dumps(r) + '\n')
