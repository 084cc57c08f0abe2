#!/usr/bin/env python
"""Layer-pattern ablation sweeps on one machine with any number of GPUs (or none): the MQAR grid of the published
protocol, or the LM comparison. Runs already finished are skipped, so a sweep cut off by a time limit resumes.

MQAR (`--task mqar`): the grid of `hybridslm.research.ablate_fast` — phase 1 trains every pattern × width × learning rate with
the first seed, phase 2 the other seeds at the learning rate chosen on the validation split — one process per run
(`python -m hybridslm.research.ablate_fast`), K processes per GPU at a time. Results: papermill_runs/ablate/<name>/runs/*.json,
then results.json, results_table.csv/.md, the plots, conclusion.md and report.ipynb in papermill_runs/ablate/<name>/.

    # the whole published grid on a 2-GPU machine, 4 runs per GPU at a time; rerun the same command to resume
    python experiments/sweep_ablate.py --task mqar --gpus 0,1 --jobs-per-gpu 2 --deadline-s 3300
    # the harder setting (sequence length 512), or a toy grid on a CPU
    python experiments/sweep_ablate.py --task mqar --profile published-512 --name mqar512 --gpus 0,1
    python experiments/sweep_ablate.py --task mqar --profile cpu-smoke --name smoke --jobs 2

LM (`--task lm`): one papermill run of experiments/ablate_layer_pattern.ipynb per pattern × seed (parameter counts
matched to the first pattern), K per GPU at a time, aggregated into papermill_runs/ablate/<name>/.

    python experiments/sweep_ablate.py --task lm --gpus 0,1 --jobs-per-gpu 2 -p lm_source=/data/corpus --deadline-s 3300
    python experiments/sweep_ablate.py --task lm --print-commands > jobs.txt      # for a cluster scheduler
    python experiments/sweep_ablate.py --task lm --aggregate-only

`-s key=value` overrides an MQAR protocol setting (`-s widths=64,128 -s epochs=64`); `-p key=value` passes an LM
notebook parameter (values parsed as YAML). Every pattern is checked before anything runs.
"""
from __future__ import annotations
import argparse, json, os, queue, shlex, signal, subprocess, sys, threading, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NB = REPO / 'experiments' / 'ablate_layer_pattern.ipynb'
REPORT_NB = REPO / 'experiments' / 'ablate_report.ipynb'
LM_PATTERNS = 'mamba,attention,1in8,1in4,roadmap'
EXIT_INCOMPLETE = 3

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--task', choices=['mqar', 'lm'], required=True)
    ap.add_argument('--name', default=None, help='sweep name: outputs in <runs-root>/<name>/ (default: the task, or <task>_<profile>)')
    ap.add_argument('--profile', default=None, help="MQAR: published (default), published-512, cpu-smoke; LM: the notebook's profile")
    ap.add_argument('--patterns', default=None, help='comma-separated patterns (default: the profile\'s)')
    ap.add_argument('--seeds', default='0,1,2', help='LM: comma-separated seeds, one run per pattern × seed (MQAR: -s seeds=...)')
    ap.add_argument('-s', '--setting', action='append', default=[], metavar='KEY=VALUE', help='MQAR protocol setting (YAML value)')
    ap.add_argument('-p', '--param', action='append', default=[], metavar='KEY=VALUE', help='LM notebook parameter (YAML value)')
    ap.add_argument('--gpus', default=None, help="comma-separated GPU ids ('all': every visible GPU); none: run on the CPU")
    ap.add_argument('--jobs-per-gpu', type=int, default=None, help='runs at once on each GPU (default 2)')
    ap.add_argument('--jobs', type=int, default=1, help='runs at once without --gpus')
    ap.add_argument('--deadline-s', type=float, default=None,
                    help='stop starting runs that would not finish within this many seconds of the start, stop the '
                         'rest then, aggregate what is done and exit 3; rerun the same command to resume')
    ap.add_argument('--start-all', action='store_true',
                    help='with --deadline-s: start runs even when they would not finish before it; stopped at the '
                         'deadline, a run saves its state under $HYBRIDSLM_CACHE and the next sweep resumes it first '
                         '(use it when that folder outlives the machine, e.g. copied between hosts)')
    ap.add_argument('--no-compile', action='store_true', help='MQAR on GPU: no torch.compile')
    ap.add_argument('--no-cuda-graphs', action='store_true', help='MQAR on GPU: no CUDA-graph capture of the train step')
    ap.add_argument('--runs-root', default='papermill_runs/ablate', help='relative paths are relative to the repo root')
    ap.add_argument('--print-commands', action='store_true', help='print one shell command per run and exit')
    ap.add_argument('--aggregate-only', action='store_true', help='skip running; aggregate existing run outputs')
    ap.add_argument('--no-report', action='store_true', help='do not execute the report notebook')
    return ap.parse_args(argv)

def _kv(items, flag):
    import yaml
    out = {}
    for kv in items:
        if '=' not in kv: raise ValueError(f"{flag} {kv!r}: expected KEY=VALUE")
        k, v = kv.split('=', 1); out[k.strip()] = yaml.safe_load(v)
    return out

def slots(a) -> list[str | None]:
    "One entry per concurrent run: a GPU id (each GPU repeated jobs-per-gpu times) or None (CPU)."
    if not a.gpus: return [None] * max(1, a.jobs)
    gpus = a.gpus.split(',') if a.gpus != 'all' else [str(i) for i in range(_n_gpus())]
    if not gpus: raise ValueError('--gpus all: no GPU visible')
    k = a.jobs_per_gpu or 2                                # 2 MQAR runs share an H200 at 1.5x one's throughput, 4 at 1.4x
    return [g for _ in range(k) for g in gpus]                       # interleaved: the first runs spread over GPUs

def _n_gpus() -> int:
    import torch
    return torch.cuda.device_count()

class Pool:
    "Runs shell commands on slots (GPU ids), at most one per slot, within an optional deadline; returns per-run outcomes."
    def __init__(self, slot_list, deadline=None, log=print):
        self.slots, self.deadline, self.log, self.procs, self.lock = slot_list, deadline, log, {}, threading.Lock()
    def left(self) -> float: return float('inf') if self.deadline is None else self.deadline - time.time()
    def run(self, jobs, estimate=lambda j: 0.0, on_done=None, skip=None, start_all=False):
        "jobs: dicts with 'name', 'cmd', 'log' (path), optional 'env'. Lowest 'priority' first, then longest estimate. `skip(job)` true: not run."
        q = queue.Queue()
        for j in sorted(jobs, key=lambda j: (j.get('priority', 0), -estimate(j))): q.put(j)
        results, skipped = [], []
        def worker(slot):
            while True:
                try: j = q.get_nowait()
                except queue.Empty: return
                if skip is not None and skip(j): continue
                if self.left() < 60 or (not start_all and estimate(j) > self.left()):   # nothing starts in the last minute
                    with self.lock: skipped.append(j['name'])
                    continue
                env = {**os.environ, **j.get('env', {})}
                if slot is not None: env['CUDA_VISIBLE_DEVICES'] = slot
                Path(j['log']).parent.mkdir(parents=True, exist_ok=True)
                t0 = time.time()
                with open(j['log'], 'w') as fh:
                    p = subprocess.Popen(j['cmd'], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
                    with self.lock: self.procs[p.pid] = p
                    try: rc = p.wait(timeout=None if self.left() == float('inf') else max(1.0, self.left()))
                    except subprocess.TimeoutExpired:
                        os.killpg(p.pid, signal.SIGTERM)                 # the run saves its state and exits
                        try: p.wait(timeout=30)
                        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait()
                        rc = 'deadline'
                    finally:
                        with self.lock: self.procs.pop(p.pid, None)
                if rc == 75: rc = 'deadline'                            # stopped by SIGTERM (ablate_fast.EXIT_STOPPED)
                out = dict(name=j['name'], rc=rc, seconds=time.time() - t0, slot=slot, job=j)
                with self.lock:
                    results.append(out)
                    if on_done: on_done(out)
        threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in self.slots]
        for t in threads: t.start()
        try:
            for t in threads: t.join()
        except KeyboardInterrupt:
            for p in list(self.procs.values()): os.killpg(p.pid, signal.SIGTERM)
            raise
        return results, skipped

def _tail(path, n=15) -> str:
    try: return '\n'.join(Path(path).read_text(errors='replace').splitlines()[-n:])
    except OSError: return ''

# ---------------------------------------------------------------- MQAR
def run_mqar(a) -> int:
    from hybridslm.research import ablate_fast as af
    settings = _kv(a.setting, '-s')
    if a.patterns: settings['patterns'] = a.patterns
    prof = a.profile or 'published'
    P = af.protocol(prof, **settings)                                # validates every pattern before anything runs
    on_gpu = bool(a.gpus)
    if on_gpu: P.update(compile=not a.no_compile, cuda_graphs=not a.no_cuda_graphs)
    root = REPO / a.runs_root / (a.name or ('mqar' if prof == 'published' else f"mqar_{prof.replace('-', '_')}"))
    if a.aggregate_only and (root / 'protocol.json').exists():   # aggregating here does not change how the runs were trained
        P.update({k: v for k, v in json.loads((root / 'protocol.json').read_text()).items() if k in ('compile', 'cuda_graphs', 'mamba_kernels')})
    sl = slots(a)
    t_start = time.time()
    deadline = t_start + a.deadline_s if a.deadline_s else None
    timings_f = root / 'timings.json'
    # a run stopped at the deadline saves its state here and resumes from it (while this machine keeps its files;
    # on a fresh machine it starts over); outside the repository, the states are tens of MB
    ckpt_dir = Path(os.environ.get('HYBRIDSLM_CACHE', Path.home() / '.cache' / 'hybridslm')) / 'mqar-ckpt' / root.name
    timings = json.loads(timings_f.read_text()) if timings_f.exists() else {}
    conc = len(sl) / max(1, len(set(sl))) if on_gpu else 1
    def estimate(j):
        s = j['spec']; k = f"{s['pattern']}_d{s['d_model']}"
        if k in timings: return timings[k]
        return af.estimate_seconds(s) if on_gpu else 0.0            # alone on a GPU; a run cut off resumes from its state
    n_expected = len(af.grid_specs(P)) + len(P['patterns']) * len(P['widths']) * (len(P['seeds']) - 1)
    print(f"MQAR grid '{root.name}' (profile {prof}): {len(P['patterns'])} patterns × {len(P['widths'])} widths × "
          f"{len(P['lrs'])} lrs, then {len(P['seeds']) - 1} more seeds: {n_expected} runs on {len(sl)} slots "
          f"({a.gpus or 'CPU'}); compile={P['compile']} cuda_graphs={P['cuda_graphs']}", flush=True)
    if on_gpu and not timings:
        tot = af.grid_estimate_seconds(P)
        print(f"estimated GPU time from the H200 per-step prior: {tot / 3600:.1f} GPU-hours one run at a time; "
              f"about {tot / 3600 / len(set(sl)) / min(conc, 1.6):.1f} h of wall time on {len(set(sl))} GPU(s) with {conc:.0f} runs each", flush=True)
    done_count = [0]
    def on_done(o):
        s = o['job']['spec']
        if o['rc'] == 0:
            timings[f"{s['pattern']}_d{s['d_model']}"] = round(o['seconds'], 1)
            timings_f.write_text(json.dumps(timings, indent=1, sort_keys=True))
            r = json.loads(Path(o['job']['out']).read_text())
            done_count[0] += 1
            print(f"[{done_count[0]}] {o['name']} on {'GPU ' + o['slot'] if o['slot'] else 'CPU'}: test acc "
                  f"{', '.join(f'{k}:{v:.2f}' for k, v in r['acc_by_kv'].items())}, val {r['val_acc']:.3f}, "
                  f"{r['steps']} steps in {o['seconds']:.0f}s ({r['tok_per_s']:,.0f} tok/s){' ' + r['note'] if r.get('note') else ''}", flush=True)
        else:
            what = 'stopped at the deadline (rerun to resume)' if o['rc'] == 'deadline' else f"FAILED (rc {o['rc']})\n{_tail(o['job']['log'])}"
            print(f"{o['name']}: {what}; log {o['job']['log']}", flush=True)
    failures = []
    def execute(specs, runs_dir):
        jobs, lr_rank = [], {lr: i for i, lr in enumerate(af.lr_order(P['lrs']))}
        for s in specs:
            key = af.run_key(s); out = Path(runs_dir) / f"{key}.json"
            cmd = [sys.executable, '-m', 'hybridslm.research.ablate_fast', '--spec', json.dumps(s), '--out', str(out),
                   '--device', 'cuda' if on_gpu else 'cpu', '--no-progress', '--ckpt', str(ckpt_dir / f"{key}.pt")]
            jobs.append(dict(name=key, cmd=cmd, out=str(out), log=str(root / 'logs' / f"{key}.log"), spec=s,
                             # a run stopped earlier first (it resumes), then every pair's first rate, its second, ...
                             priority=-1 if (ckpt_dir / f"{key}.pt").exists() else lr_rank.get(s['lr'], 0) if s['phase'] == 'lr' else 0,
                             env={'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // len(sl)) if on_gpu else 1)}))
        if a.print_commands:
            for j in jobs: print(shlex.join(j['cmd']))
            return
        def solved(j):                                               # phase 1: another rate of this pattern and width solved it
            if (lr := af.skip_if_solved(runs_dir, j['spec'])) is None: return False
            print(f"{j['name']}: not run, the task was solved at lr {lr:g}", flush=True)
            return True
        res, skipped = Pool(sl, deadline).run(jobs, estimate, on_done, skip=solved, start_all=a.start_all)
        failures.extend(o for o in res if o['rc'] not in (0, 'deadline'))
        if skipped: print(f"{len(skipped)} runs not started: they would not finish before the deadline", flush=True)
    if a.aggregate_only:
        g = af.run_grid(P, root, lambda specs, runs_dir: None, log=lambda m: None)   # nothing runs: the outputs of what is there
    else:
        g = af.run_grid(P, root, execute, log=lambda m: print(m, flush=True), write=not a.print_commands)
    if a.print_commands: return 0
    print(g['conclusion'], flush=True)
    if not a.no_report and g['results']: report(root)
    print(f"outputs in {root.relative_to(REPO) if root.is_relative_to(REPO) else root}; {time.time() - t_start:.0f}s", flush=True)
    if failures: print(f"{len(failures)} runs failed: {[o['name'] for o in failures]}", file=sys.stderr); return 1
    return 0 if g['complete'] else EXIT_INCOMPLETE

# ---------------------------------------------------------------- LM
def lm_runs(a) -> list[dict]:
    import papermill, yaml
    from hybridslm.research.ablate import validate_patterns
    extra = _kv(a.param, '-p')
    known = set(papermill.inspect_notebook(str(NB)))
    unknown = sorted(set(extra) - known)
    if unknown: raise ValueError(f"unknown notebook parameter(s) {unknown}; {NB.name} takes {sorted(known - {'_declared'})}")
    for k in ('patterns', 'reference_pattern', 'task', 'out_dir', 'run_name', 'seeds', 'profile'):
        if k in extra: raise ValueError(f"-p {k}=... is set by the sweep driver; use its own options")
    pats = [p.strip() for p in (a.patterns or LM_PATTERNS).split(',') if p.strip()]
    validate_patterns(pats, extra.get('n_layers') or 16)             # every pattern, before any run starts
    seeds = [int(x) for x in a.seeds.split(',') if x.strip()]
    root = Path(a.runs_root) / (a.name or 'lm')
    if root.is_absolute() and root.is_relative_to(REPO): root = root.relative_to(REPO)
    runs = []
    for s in seeds:                        # seed-major: a sweep cut off by its deadline has every pattern at the first seeds
        for p in pats:
            d = root / f"{p}_s{s}"
            params = {**extra, 'task': 'lm', 'patterns': [p], 'seeds': [s], 'reference_pattern': pats[0],
                      'run_name': f"{root.name}/{p}_s{s}", 'out_dir': str(d)}
            if a.profile: params['profile'] = a.profile
            cmd = [sys.executable, '-m', 'papermill', str(NB.relative_to(REPO)), str(d / 'ablate.ipynb'), '-k', 'python3',
                   '--no-progress-bar', '--cwd', '.', '-y', yaml.safe_dump(params, default_flow_style=True, width=10**9).strip()]
            runs.append(dict(name=f"{p}_s{s}", dir=d, cmd=cmd, log=str(REPO / d / 'papermill.log')))
    return runs

def run_lm(a) -> int:
    runs = lm_runs(a)
    root = REPO / runs[0]['dir'].parent
    if a.print_commands:
        for r in runs: print(f"cd {shlex.quote(str(REPO))} && {shlex.join(r['cmd'])}")
        return 0
    t_start = time.time()
    todo = [r for r in runs if not (REPO / r['dir'] / 'results.json').exists()]
    print(f"LM sweep '{root.name}': {len(runs)} runs (pattern × seed), {len(runs) - len(todo)} already done", flush=True)
    if not a.aggregate_only and todo:
        deadline = t_start + a.deadline_s if a.deadline_s else None
        from hybridslm.research.ablate import clean_executed_notebook
        def on_done(o):
            d = REPO / o['job']['dir']
            if o['rc'] == 0: clean_executed_notebook(d / 'ablate.ipynb')    # no stderr, no paths of this machine
            else: (d / 'results.json').unlink(missing_ok=True)      # stopped after its training: the notebook is incomplete
            print(f"{o['name']}: {'ok' if o['rc'] == 0 else o['rc']} in {o['seconds']:.0f}s", flush=True)
        res, skipped = Pool(slots(a), deadline).run(todo, lambda j: 0.0, on_done)
        bad = [o for o in res if o['rc'] not in (0, 'deadline')]
        for o in bad: print(f"{o['name']} FAILED, see {o['job']['log']}\n{_tail(o['job']['log'])}", file=sys.stderr)
        if bad: return 1
    done = [r for r in runs if (REPO / r['dir'] / 'results.json').exists()]
    if not done: print('no finished runs to aggregate', file=sys.stderr); return EXIT_INCOMPLETE
    from hybridslm.research.ablate import aggregate
    os.chdir(REPO)
    agg = aggregate([r['dir'] for r in done], root)
    print(agg['table'].to_string(index=False)); print(agg['conclusion'])
    if not a.no_report: report(root)
    return 0 if len(done) == len(runs) else EXIT_INCOMPLETE

def report(root: Path):
    "Execute experiments/ablate_report.ipynb over the sweep into <root>/report.ipynb (outputs cleaned for committing)."
    try: import papermill
    except ImportError: print(f"papermill is not installed: no report.ipynb (run --aggregate-only later where it is)"); return
    rel = root.relative_to(REPO) if root.is_relative_to(REPO) else root
    out = root / 'report.ipynb'
    papermill.execute_notebook(str(REPORT_NB), str(out), kernel_name='python3', parameters={'sweeps': [str(rel)]},
                               cwd=str(REPO), progress_bar=False, log_output=False)
    from hybridslm.research.ablate import clean_executed_notebook
    clean_executed_notebook(out)
    print('report:', rel / 'report.ipynb', flush=True)

def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        return run_mqar(a) if a.task == 'mqar' else run_lm(a)
    except ValueError as e:                                          # a bad pattern / setting: one clear line, nothing started
        print(f"error: {e}", file=sys.stderr); return 2

if __name__ == '__main__':
    sys.exit(main())
