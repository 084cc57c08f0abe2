#!/usr/bin/env python
"""Where the time of an MQAR grid run goes on one GPU, to plan (and speed up) the grid of `hybridslm.research.ablate_fast`.

Parts (`--parts`, comma-separated):

* `steps`: steady-state training throughput of one grid run (`python -m hybridslm.research.ablate_fast`, the lean trainer)
  per pattern, width, Mamba chunk size, with and without `torch.compile`, with mamba_ssm's Triton scan or the pure-torch SSD
  compiled into the step (always with the whole step as a CUDA graph);
* `profile`: the top CUDA kernels of a few eager training steps (torch profiler), per pattern; `cprofile`: the same
  with the loss module compiled, as the grid runs it (before the whole step is captured as a CUDA graph);
* `share`: the summed throughput of N copies of one run sharing the GPU as separate processes (N = 1, 2, 4): whether
  the sweep driver's `--jobs-per-gpu` adds throughput or only divides it.

    python experiments/bench_mqar_step.py --out papermill_runs/ablate/speed/step [--parts steps,profile,share]

Writes `results.json` (every measurement, card, versions, date) and prints one line per measurement.
"""
from __future__ import annotations
import argparse, datetime, json, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = [  # (pattern, d_model, chunk_size, compile, mamba_ssm's Triton kernels: else the pure-torch SSD, compiled with the step)
    ('MMMM', 256, 64, True, True), ('MMMM', 256, 64, True, False), ('MMMM', 256, 256, True, False),
    ('MMMM', 128, 64, True, True), ('MMMM', 128, 64, True, False), ('MM', 64, 64, True, True), ('MM', 64, 64, True, False),
    ('MMMM', 128, 128, False, True), ('MMMM', 128, 256, False, True), ('AAAA', 128, 64, True, True),
]


def spec(pattern, d_model, chunk, compile_, steps, seed=0, kernels=True):
    from hybridslm.research.ablate_fast import protocol
    p = protocol('published', n_train=256 * 100, n_val_per_kv=200, n_test_per_kv=200, max_steps=steps,
                 compile=compile_, cuda_graphs=True)
    base = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items() if k not in ('patterns', 'widths', 'lrs', 'seeds')}
    return dict(base, pattern=pattern, d_model=d_model, lr=1e-3, seed=seed, phase='bench', mamba_kernels=kernels,
                model_overrides={'chunk_size': chunk})


def launch(s, out: Path, log: Path):
    return subprocess.Popen([sys.executable, '-m', 'hybridslm.research.ablate_fast', '--spec', json.dumps(s), '--out', str(out),
                             '--no-progress'], cwd=REPO, stdout=open(log, 'w'), stderr=subprocess.STDOUT)


def part_steps(tmp: Path, steps: int) -> list[dict]:
    rows = []
    for i, (pat, w, c, comp, kern) in enumerate(STEPS):
        out, log = tmp / f'steps{i}.json', tmp / f'steps{i}.log'
        t0 = time.time(); rc = launch(spec(pat, w, c, comp, steps, kernels=kern), out, log).wait()
        if rc or not out.exists():
            rows.append(dict(part='steps', pattern=pat, d_model=w, chunk=c, compile=comp, kernels=kern, error=log.read_text()[-800:])); continue
        r = json.loads(out.read_text())
        row = dict(part='steps', pattern=pat, d_model=w, chunk=c, compile=comp, kernels=kern, tok_per_s=r['tok_per_s'],
                   ms_per_step=256 * 256 / r['tok_per_s'] * 1e3, wall_s=time.time() - t0, cuda_graphs=r['cuda_graphs'])
        print(json.dumps(row), flush=True); rows.append(row)
    return rows


def part_share(tmp: Path, steps: int, pattern='MMMM', d_model=128) -> list[dict]:
    rows = []
    for n in (1, 2, 4):
        procs = [(launch(spec(pattern, d_model, 64, False, steps, seed=j), tmp / f'share{n}_{j}.json', tmp / f'share{n}_{j}.log'),
                  tmp / f'share{n}_{j}.json') for j in range(n)]
        for p, _ in procs: p.wait()
        rates = [json.loads(o.read_text())['tok_per_s'] for _, o in procs if o.exists()]
        row = dict(part='share', pattern=pattern, d_model=d_model, processes=n, finished=len(rates),
                   per_process_tok_s=rates, total_tok_s=sum(rates))
        print(json.dumps(row), flush=True); rows.append(row)
    return rows


def part_profile(patterns=(('MMMM', 128), ('AAAA', 128)), compiled: bool = False) -> list[dict]:
    import torch
    from torch.profiler import profile, ProfilerActivity
    from hybridslm.research.ablate_fast import mqar_config, mqar_splits, query_index, QueryHeadLoss
    from hybridslm.model import HybridForCausalLM
    from hybridslm.model.mamba2 import load_mamba_kernels
    load_mamba_kernels()
    rows = []
    d = mqar_splits(n_train=256, n_val_per_kv=8, n_test_per_kv=8)
    x = d['train']['inputs'].cuda(); qp, ql = (t.cuda() for t in query_index(d['train']['targets']))
    for pat, w in patterns:
        torch.manual_seed(0)
        net = QueryHeadLoss(HybridForCausalLM(mqar_config(pat, w)).cuda())
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
        fwd = torch.compile(net, dynamic=False) if compiled else net       # what the grid runs (before CUDA-graph capture)
        def step():
            with torch.autocast('cuda', dtype=torch.bfloat16): loss = fwd(x, qp, ql)
            loss.backward(); torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
        for _ in range(3): step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5): step()
            torch.cuda.synchronize()
        ev = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        tot = sum(e.device_time_total for e in ev) / 5
        top = [dict(kernel=e.key[:90], us_per_step=e.device_time_total / 5, calls_per_step=e.count / 5) for e in ev[:18]]
        row = dict(part='cprofile' if compiled else 'profile', pattern=pat, d_model=w, gpu_us_per_step=tot,
                   kernels_per_step=sum(e.count for e in ev) / 5, top=top)
        print(f"{'compiled ' if compiled else ''}profile {pat} d{w}: {tot / 1e3:.2f} ms of kernels per step, {row['kernels_per_step']:.0f} kernels", flush=True)
        for t in top: print(f"   {t['us_per_step']:9.1f} us  x{t['calls_per_step']:5.1f}  {t['kernel']}", flush=True)
        rows.append(row)
        del net, opt, fwd, step; torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', required=True)
    ap.add_argument('--parts', default='profile,steps,share')
    ap.add_argument('--steps', type=int, default=200, help='training steps per timed run (timing starts after warm-up)')
    a = ap.parse_args(argv)
    import torch
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = []
    meta = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(0), torch=torch.__version__)
    try:
        import triton; meta['triton'] = triton.__version__
    except ImportError: pass
    with tempfile.TemporaryDirectory() as td:
        for part in a.parts.split(','):
            t0 = time.time()
            rows += {'steps': lambda: part_steps(Path(td), a.steps), 'share': lambda: part_share(Path(td), a.steps),
                     'profile': part_profile, 'cprofile': lambda: part_profile(compiled=True)}[part]()
            print(f"part {part}: {time.time() - t0:.0f}s", flush=True)
            (out / 'results.json').write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == '__main__':
    main()
