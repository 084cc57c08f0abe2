#!/usr/bin/env python
"""What document masking costs a training step on one GPU: the same packed rows (documents separated by EOS) trained
whole and with each document on its own (the Mamba-2 scan and conv reset at every boundary through `seq_idx`, attention
through FlexAttention's block mask, RoPE positions restarting), in interleaved rounds in one process.

    python experiments/bench_doc_mask.py --preset 1.3b --seq-len 2048 --micro-batch 4 --out papermill_runs/doc_mask/bench

Document lengths are drawn from a geometric distribution (mean `--mean-doc` tokens), the shape of web text after
filtering; bf16 autocast with fp32 master weights, fused AdamW, `compile_blocks` unless `--eager`. Writes results.json
and results.md into `--out`.
"""
from __future__ import annotations
import argparse, json, platform, statistics, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--preset', default='1.3b')
    ap.add_argument('--seq-len', type=int, default=2048)
    ap.add_argument('--micro-batch', type=int, default=4)
    ap.add_argument('--mean-doc', type=float, default=600.0, help='mean document length in tokens (geometric)')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--eager', action='store_true', help='no compile_blocks')
    ap.add_argument('--out', default='papermill_runs/doc_mask/bench')
    a = ap.parse_args(argv)
    for k in ('seq_len', 'micro_batch', 'iters', 'rounds'):
        if getattr(a, k) < 1: ap.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if a.warmup < 0: ap.error(f"--warmup must be >= 0, got {a.warmup}")
    if not 1 <= a.mean_doc <= a.seq_len: ap.error(f"--mean-doc must lie in 1 .. seq_len ({a.seq_len}), got {a.mean_doc}")
    import torch
    if not torch.cuda.is_available(): raise SystemExit("bench_doc_mask needs a CUDA GPU")
    from hybridslm.model import HybridConfig, HybridForCausalLM, compile_blocks
    from hybridslm.model.mamba2 import load_mamba_kernels
    from hybridslm.data.pack import document_seq_idx
    kernels = load_mamba_kernels() is not None
    cfg = HybridConfig.from_preset(a.preset)
    model = HybridForCausalLM(cfg).cuda()
    if not a.eager: compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size - 1, (a.micro_batch, a.seq_len), generator=g)
    eos = cfg.vocab_size - 1
    p = 1.0 / a.mean_doc
    ends = torch.rand(ids.shape, generator=g) < p                   # each token ends its document with probability 1/mean
    ids[ends] = eos
    si = document_seq_idx(ids, eos)
    n_docs = int((si[:, -1] + 1).sum())
    ids, si = ids.cuda(), si.cuda()

    def step(masked: bool):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = model(ids, labels=ids, seq_idx=si if masked else None).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

    def timed(masked: bool) -> float:
        for _ in range(a.warmup): step(masked)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(a.iters): step(masked)
        torch.cuda.synchronize()
        return a.micro_batch * a.seq_len * a.iters / (time.perf_counter() - t)

    t0 = time.perf_counter()
    rounds = {'whole': [], 'masked': []}
    for r in range(a.rounds):
        for name in (('whole', 'masked') if r % 2 == 0 else ('masked', 'whole')):
            rounds[name].append(timed(name == 'masked'))
            print(f"round {r + 1} {name}: {rounds[name][-1]:,.0f} tokens/s", flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    cost = 1 - med['masked'] / med['whole']
    res = dict(preset=a.preset, params=sum(x.numel() for x in model.parameters()), seq_len=a.seq_len,
               micro_batch=a.micro_batch, mean_doc=a.mean_doc, docs_per_row=n_docs / a.micro_batch,
               compiled=not a.eager, mamba_kernels=kernels, rounds=rounds, median_tok_s=med, cost=cost,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30, gpu=torch.cuda.get_device_name(),
               torch=torch.__version__, python=platform.python_version(), date=time.strftime('%Y-%m-%d'),
               wall_s=time.perf_counter() - t0)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'results.json').write_text(json.dumps(res, indent=1))
    (out / 'results.md').write_text(
        f"| {a.preset}, seq {a.seq_len} × {a.micro_batch}, {res['docs_per_row']:.1f} documents per row | tokens/s (median of {a.rounds}) |\n"
        f"|---|---|\n| rows trained whole | {med['whole']:,.0f} |\n| documents masked | {med['masked']:,.0f} |\n"
        f"| cost | {100 * cost:.1f}% |\n\n{res['gpu']}, torch {res['torch']}, {'compiled blocks' if not a.eager else 'eager'}, {res['date']}\n")
    print(f"document masking costs {100 * cost:.1f}% ({med['masked']:,.0f} vs {med['whole']:,.0f} tokens/s)")
    return res

if __name__ == '__main__':
    main()
