#!/usr/bin/env python
"""Training speed of the small models of the layer-pattern ablations: hybridslm against mamba_ssm's hybrid
(`MambaLMHeadModel` with `attn_layer_idx`) at the same shape, in one process on one GPU, one after the other.

Two shapes (both are bound by kernel launches rather than FLOPs at these sizes):

* `lm`: the ~30M-parameter LM-ablation shape (d_model 320, 16 layers, attention at layers 1, 4, 10, 14, 15,
  vocabulary 8192), sequence 1024, micro-batch 16, next-token loss over every position;
* `mqar`: the 2-layer, d_model 128 MQAR model (`MA`), vocabulary 8192, sequence 256, batch 256, loss at the query
  positions only (Zoology's MQAR data).

Systems: `mamba_ssm` (eager, as its users train it), `mamba_ssm_graph` (the same model with the whole step captured
as one CUDA graph by `hybridslm.train.graphs.GraphedTrainStep`: the lever offered to the peer too), and ours:
`eager`, `graph` (whole step as one CUDA graph), `compiled_graph` (`torch.compile` of the loss module, then the whole
step captured). For `mqar` also `query_head_graph`: our MQAR trainer's loss, which applies the LM head at the query
positions only (a saving mamba_ssm's model can't make without changing its forward). Every system: bf16 autocast,
fp32 master weights, fused AdamW (capturable for the graphed ones), gradient clipping at 1.0.

    python experiments/bench_ablate_speed.py --out papermill_runs/ablate/speed [--shapes lm,mqar] [--iters 50]

Writes `results.json` (tokens/s per shape and system, ratios against mamba_ssm, card, versions, date) and
`results.md`. Needs a CUDA GPU and mamba_ssm (its Triton kernels; no CUDA extension needed).
"""
from __future__ import annotations
import argparse, datetime, gc, json, sys, time, traceback
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from hybridslm.model.config import HybridConfig, count_params
from hybridslm.model import HybridForCausalLM
from hybridslm.model.mamba2 import load_mamba_kernels
from hybridslm.train.graphs import GraphedTrainStep
from hybridslm.research.synthetic import make_mqar, IGNORE
from hybridslm.research.ablate_fast import QueryHeadLoss, query_index

SHAPES = {
    'lm': dict(cfg=dict(vocab_size=8192, d_model=320, d_ff=1152, layer_pattern='MAMMAMMMMMAMMMAA', n_heads=8, n_kv_heads=4,
                        d_state=128, headdim=64, max_seq_len=1024), batch=16, seq=1024, task='lm'),
    'mqar': dict(cfg=dict(vocab_size=8192, d_model=128, layer_pattern='MA', n_heads=2, n_kv_heads=2, d_state=64, headdim=64,
                          chunk_size=64, ff_multiple_of=64, max_seq_len=256), batch=256, seq=256, task='mqar'),
}

def mamba_ssm_model(cfg: HybridConfig) -> nn.Module:
    load_mamba_kernels()                          # registers the selective_scan_cuda placeholder if needed
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig
    mc = MambaConfig(d_model=cfg.d_model, n_layer=cfg.n_layers, d_intermediate=cfg.d_ff, vocab_size=cfg.vocab_size,
                     ssm_cfg={'layer': 'Mamba2', 'd_state': cfg.d_state, 'headdim': cfg.headdim, 'chunk_size': cfg.chunk_size,
                              'use_mem_eff_path': False},
                     attn_layer_idx=cfg.attn_layer_idx,
                     attn_cfg={'num_heads': cfg.n_heads, 'num_heads_kv': cfg.n_kv_heads, 'rotary_emb_dim': 0, 'causal': True},
                     rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=16, tie_embeddings=True)
    return MambaLMHeadModel(mc, device='cuda')

class FullLoss(nn.Module):
    "Next-token (lm) or masked (mqar) cross-entropy from the full logits of either model."
    def __init__(self, model, ours: bool): super().__init__(); self.model, self.ours = model, ours
    def forward(self, ids, targets):
        logits = self.model(ids, use_cache=False).logits if self.ours else self.model(ids).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)

def batch_for(shape: dict, cfg: HybridConfig):
    B, L = shape['batch'], shape['seq']
    if shape['task'] == 'lm':
        ids = torch.randint(0, cfg.vocab_size, (B, L + 1), device='cuda')
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    d = make_mqar(B, vocab_size=cfg.vocab_size, seq_len=L, num_kv_pairs=64, seed=0)
    return d['inputs'].cuda(), d['targets'].cuda()

def bench(system: str, shape: dict, iters: int, warmup: int) -> dict:
    gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    cfg = HybridConfig(**shape['cfg'])
    ours = not system.startswith('mamba_ssm')
    model = HybridForCausalLM(cfg).cuda() if ours else mamba_ssm_model(cfg)
    graph = system.endswith('graph')
    ids, tgt = batch_for(shape, cfg)
    if system == 'query_head_graph':
        loss_mod, batch = QueryHeadLoss(model), (ids, *query_index(tgt))
    else:
        loss_mod, batch = FullLoss(model, ours), (ids, tgt)
    fn = torch.compile(loss_mod, dynamic=False) if system == 'compiled_graph' else loss_mod
    params = [p for p in {id(p): p for p in model.parameters()}.values()]
    opt = torch.optim.AdamW(params, lr=torch.tensor(1e-3, device='cuda') if graph else 1e-3, betas=(0.9, 0.95),
                            weight_decay=0.1, fused=True, capturable=graph)
    step = GraphedTrainStep(params, opt, fn, grad_clip=1.0, autocast_dtype=torch.bfloat16, graph=graph)
    t0 = time.perf_counter()
    for i in range(warmup): loss, _ = step(*batch)
    torch.cuda.synchronize(); warm_s = time.perf_counter() - t0
    t = time.perf_counter()
    for i in range(iters): loss, _ = step(*batch)
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / iters
    n = sum(p.numel() for p in params)
    r = dict(system=system, params=n, step_ms=dt * 1e3, tok_s=shape['batch'] * shape['seq'] / dt, warmup_s=warm_s,
             peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30, loss=loss.item(), captured=step.graph is not None)
    del step, opt, model, loss_mod, fn
    return r

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='papermill_runs/ablate/speed')
    ap.add_argument('--shapes', default='lm,mqar')
    ap.add_argument('--iters', type=int, default=50)
    ap.add_argument('--warmup', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=2, help='each system is timed this many times, interleaved; best kept')
    a = ap.parse_args(argv)
    if not torch.cuda.is_available(): sys.exit("bench_ablate_speed needs a CUDA GPU")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    import triton, transformers
    try:
        load_mamba_kernels(); import mamba_ssm; mver = mamba_ssm.__version__
    except Exception as e: mver = f'unavailable ({e})'
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), gpu=torch.cuda.get_device_name(),
                torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__, mamba_ssm=mver,
                iters=a.iters, warmup=a.warmup, rounds=a.rounds)
    print(meta, flush=True)
    res = {}
    for sname in a.shapes.split(','):
        shape = SHAPES[sname]
        systems = ['mamba_ssm', 'mamba_ssm_graph', 'eager', 'graph', 'compiled_graph'] + (['query_head_graph'] if shape['task'] == 'mqar' else [])
        rows = {}
        for rnd in range(a.rounds):
            for s in systems:
                try: r = bench(s, shape, a.iters, a.warmup)
                except Exception as e:
                    r = dict(system=s, error=f'{type(e).__name__}: {str(e)[:300]}'); traceback.print_exc()
                print(sname, rnd, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
                if 'tok_s' in r and ('tok_s' not in rows.get(s, {}) or r['tok_s'] > rows[s]['tok_s']): rows[s] = r
                elif s not in rows: rows[s] = r
        base = rows.get('mamba_ssm', {}).get('tok_s')
        for r in rows.values():
            if base and 'tok_s' in r: r['vs_mamba_ssm'] = r['tok_s'] / base
        res[sname] = dict(shape={k: v for k, v in shape.items()}, systems=rows)
    (out / 'results.json').write_text(json.dumps(dict(meta=meta, results=res), indent=1))
    lines = [f"# Small-model training speed, {meta['gpu']}, {meta['date']}", '',
             f"torch {meta['torch']}, triton {meta['triton']}, mamba_ssm {meta['mamba_ssm']}; best of {a.rounds} interleaved rounds of {a.iters} steps after {a.warmup} warm-up steps.", '']
    for sname, d in res.items():
        sh = d['shape']
        lines += [f"## `{sname}`: {sh['cfg']['layer_pattern']}, d_model {sh['cfg']['d_model']}, batch {sh['batch']} x seq {sh['seq']}", '',
                  '| system | params | step ms | tokens/s | vs mamba_ssm (eager) |', '|---|---|---|---|---|']
        for s, r in d['systems'].items():
            if 'tok_s' in r: lines.append(f"| {s} | {r['params'] / 1e6:.2f}M | {r['step_ms']:.2f} | {r['tok_s']:,.0f} | {r.get('vs_mamba_ssm', float('nan')):.2f}x |")
            else: lines.append(f"| {s} | failed: {r['error'][:120]} | | | |")
        lines.append('')
    (out / 'results.md').write_text('\n'.join(lines))
    print('\n'.join(lines))

if __name__ == '__main__': main()
