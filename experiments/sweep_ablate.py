#!/usr/bin/env python
"""Layer-pattern ablation sweep: one papermill run of experiments/ablate_layer_pattern.ipynb per pattern, then one
aggregate (results.json, results_table.csv/.md, plots) over all of them.

Each run gets `reference_pattern` = the first pattern of the sweep, so parameter counts match across runs that never
see each other. Runs land in papermill_runs/ablate/<name>/<pattern>/ (executed notebook + its own results), the
aggregate (plus the report notebook experiments/ablate_report.ipynb, executed as report.ipynb) in
papermill_runs/ablate/<name>/.

    # run everything here, one after the other (or --jobs N, --gpus 0,1,2,3 to spread over GPUs)
    python experiments/sweep_ablate.py --name gpu_lm --task lm --patterns mamba,attention,seed,1in8 -p device=cuda
    # a cluster: print one command per pattern, submit them, then aggregate when they are done
    python experiments/sweep_ablate.py --name gpu_lm --task lm --print-commands > jobs.txt
    python experiments/sweep_ablate.py --name gpu_lm --task lm --aggregate-only

`-p key=value` passes any notebook parameter (values parsed as YAML: -p steps=300 -p 'seeds=[0,1,2]').
"""
from __future__ import annotations
import argparse, os, re, shlex, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NB = REPO / 'experiments' / 'ablate_layer_pattern.ipynb'
DEFAULT_PATTERNS = {'mqar': 'MMMM,MAMM,AAAA', 'lm': 'mamba,attention,seed,1in8'}

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--name', required=True, help='sweep name: outputs in papermill_runs/ablate/<name>/')
    ap.add_argument('--task', choices=['mqar', 'lm'], required=True)
    ap.add_argument('--patterns', default=None, help='comma-separated patterns (default: the task default)')
    ap.add_argument('-p', '--param', action='append', default=[], metavar='KEY=VALUE', help='notebook parameter (YAML value)')
    ap.add_argument('--jobs', type=int, default=1, help='runs in parallel on this machine')
    ap.add_argument('--gpus', default=None, help='comma-separated GPU ids, assigned round-robin via CUDA_VISIBLE_DEVICES')
    ap.add_argument('--runs-root', default='papermill_runs/ablate', help='relative paths are relative to the repo root')
    ap.add_argument('--print-commands', action='store_true', help='print one shell command per run and exit')
    ap.add_argument('--aggregate-only', action='store_true', help='skip running; aggregate existing run outputs')
    return ap.parse_args(argv)

def run_label(pattern: str) -> str:
    if not re.fullmatch(r'[A-Za-z0-9_.-]+', pattern): raise ValueError(f"pattern {pattern!r} has characters unusable in a directory name")
    return pattern

def build_runs(a) -> list[dict]:
    import yaml
    pats = [p.strip() for p in (a.patterns or DEFAULT_PATTERNS[a.task]).split(',') if p.strip()]
    if not pats: raise ValueError('--patterns is empty')
    extra = {}
    for kv in a.param:
        if '=' not in kv: raise ValueError(f"-p {kv!r}: expected KEY=VALUE")
        k, v = kv.split('=', 1); extra[k.strip()] = yaml.safe_load(v)
    import papermill
    known = set(papermill.inspect_notebook(str(NB)))
    unknown = sorted(set(extra) - known)
    if unknown: raise ValueError(f"unknown notebook parameter(s) {unknown}; {NB.name} takes {sorted(known - {'_declared'})}")
    for k in ('patterns', 'reference_pattern', 'task', 'out_dir', 'run_name'):
        if k in extra: raise ValueError(f"-p {k}=... is set by the sweep driver; use its own options")
    root = Path(a.runs_root) / a.name
    if root.is_absolute() and root.is_relative_to(REPO): root = root.relative_to(REPO)   # portable commands
    runs = []
    for i, p in enumerate(pats):
        d = root / run_label(p)
        params = {**extra, 'task': a.task, 'patterns': [p], 'reference_pattern': pats[0], 'run_name': f"{a.name}/{p}", 'out_dir': str(d)}
        cmd = [sys.executable, '-m', 'papermill', str(NB), str(d / 'ablate.ipynb'), '-k', 'python3', '--no-progress-bar',
               '--cwd', str(REPO), '-y', yaml.safe_dump(params, default_flow_style=True, width=10**9).strip()]
        env = {'CUDA_VISIBLE_DEVICES': a.gpus.split(',')[i % len(a.gpus.split(','))]} if a.gpus else {}
        runs.append({'pattern': p, 'dir': d, 'cmd': cmd, 'env': env})
    return runs

def launch(run) -> tuple[str, int, float]:
    (REPO / run['dir']).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(REPO / run['dir'] / 'papermill.log', 'w') as log:
        rc = subprocess.call(run['cmd'], cwd=REPO, env={**os.environ, **run['env']}, stdout=log, stderr=subprocess.STDOUT)
    return run['pattern'], rc, time.time() - t0

def main(argv=None) -> int:
    a = parse_args(argv)
    runs = build_runs(a)
    if a.print_commands:
        for r in runs:
            env = ''.join(f"{k}={v} " for k, v in r['env'].items())
            print(f"cd {shlex.quote(str(REPO))} && {env}{shlex.join(r['cmd'])}")
        return 0
    if not a.aggregate_only:
        with ThreadPoolExecutor(max(1, a.jobs)) as ex:
            failed = []
            for pat, rc, dt in ex.map(launch, runs):
                print(f"{pat}: {'ok' if rc == 0 else f'FAILED (rc {rc}), see papermill.log'} in {dt:.0f}s", flush=True)
                if rc: failed.append(pat)
        if failed:
            print(f"failed runs: {failed}; not aggregating", file=sys.stderr); return 1
    from hybridslm.ablate import aggregate
    os.chdir(REPO)
    agg = aggregate([r['dir'] for r in runs], runs[0]['dir'].parent)
    print(agg['table'].to_string(index=False))
    print('plots:', ', '.join(str(p) for p in agg['plots']))
    print(agg['conclusion'])
    import papermill                                   # the sweep's reading copy: tables, plots, computed verdict
    root = runs[0]['dir'].parent
    papermill.execute_notebook(str(REPO / 'experiments' / 'ablate_report.ipynb'), str(root / 'report.ipynb'), kernel_name='python3',
                               parameters={'sweeps': [str(root)]}, cwd=str(REPO), progress_bar=False)
    print('report:', root / 'report.ipynb')
    return 0

if __name__ == '__main__':
    sys.exit(main())
