"""Stopping a multi-process training run started by `hybridslm.train.launch.launch` (torchrun, 2 CPU ranks, gloo):

* SIGKILL of the launcher process, or of its whole process group, takes the torchrun agent and every rank down
  within seconds: no process of the run survives and no checkpoint is written afterwards; the same run started
  again with `resume='auto'` finishes;
* SIGTERM to the launcher is forwarded to the ranks (torchrun; with HYBRIDSLM_SLOW_TESTS=1 also DeepSpeed's
  launcher): each finishes its step and saves it, and the launcher and everything it started exit within a bound;
* (HYBRIDSLM_SLOW_TESTS=1) the same for `experiments/train.ipynb` under papermill: SIGKILL to papermill ends the
  kernel that runs `launch`, and with it the whole run.

"Every process of the run" is found twice over: the launcher's descendants (walked before the kill, since
torchrun puts each rank in a session of its own) and any process whose command line names the run's `run.json`.
"""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest

psutil = pytest.importorskip('psutil')
pytest.importorskip('deepspeed')
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
       'TORCH_EXTENSIONS_DIR': str(REPO / '.cache' / 'torch_extensions')}
RUN = dict(data='embedded:alice_in_wonderland', layer_pattern='MA', seq_len=32, micro_batch=2, grad_accum=1,
           model_overrides=dict(d_model=32, n_heads=4, n_kv_heads=2, d_state=8, headdim=16, chunk_size=16),
           num_gpus=2, zero_stage=1, max_steps=30, save_every=2, keep_last=2, eval_every=0, eval_batches=1,
           time_budget_min=None, lr=3e-3, warmup=2, precision='fp32', log_to='', resume='auto')
# the launcher: what a notebook kernel or a script does, in a process of its own that the test can kill
LAUNCHER = ("import json, sys; from hybridslm.train.launch import resolve_run, launch; "
            "launch(resolve_run(json.loads(sys.argv[1])), sys.argv[2], quiet=True)")

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def start_launcher(out: Path, new_session=False, **kw):
    out.mkdir(parents=True, exist_ok=True)
    p = {**RUN, **kw, 'out_dir': str(out), 'master_port': free_port()}
    return subprocess.Popen([sys.executable, '-c', LAUNCHER, json.dumps(p), str(out)], cwd=REPO, env=ENV,
                            stdout=open(out / 'launcher.out', 'a'), stderr=subprocess.STDOUT, start_new_session=new_session)

def alive(p) -> bool:
    try: return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return False

def run_processes(out: Path, root_pid: int | None = None) -> dict:
    "Live processes of the run in `out`: `root_pid` and its descendants, and every process naming `out/run.json`."
    found = {}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid); found.update({q.pid: q for q in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess: pass
    cfg = str(out / 'run.json')
    for q in psutil.process_iter():
        try:
            if q.pid != os.getpid() and cfg in ' '.join(q.cmdline()): found[q.pid] = q
        except psutil.Error: pass
    return {pid: q for pid, q in found.items() if alive(q)}

def describe(procs) -> list[str]:
    out = []
    for q in procs:
        try: out.append(f"{q.pid} {' '.join(q.cmdline())[:150]}")
        except psutil.Error: out.append(str(q.pid))
    return out

def steps_logged(out: Path) -> int:
    p = out / 'metrics.jsonl'
    if not p.exists(): return 0
    return max([json.loads(l)['step'] for l in p.read_text().splitlines() if '"loss"' in l and l.endswith('}')], default=0)

def wait_for_steps(proc, out: Path, n: int, timeout=180):
    t0 = time.time()
    while steps_logged(out) < n:
        assert proc.poll() is None, f"launcher exited ({proc.returncode}) before step {n}:\n{(out / 'launcher.out').read_text()[-3000:]}"
        assert time.time() - t0 < timeout, f"no step {n} after {timeout} s"
        time.sleep(0.05)

AGENTS = ('torch.distributed.run', 'deepspeed.launcher')

def the_run(proc, out: Path) -> list:
    "The launcher, the torchrun agent (DeepSpeed's runner and per-node launcher) and both ranks, all alive now."
    procs = list(run_processes(out, proc.pid).values())
    ranks = [q for q in procs if '--config' in q.cmdline() and not any(a in ' '.join(q.cmdline()) for a in AGENTS)]
    assert len(ranks) == 2 and any(a in ' '.join(q.cmdline()) for q in procs for a in AGENTS), describe(procs)
    return procs

def assert_all_gone(procs, out: Path, within: float):
    t0 = time.time()
    while time.time() - t0 < within:
        left = [q for q in procs if alive(q)] + [q for q in run_processes(out).values() if q not in procs]
        if not left: return time.time() - t0
        time.sleep(0.1)
    raise AssertionError(f"still running {within} s after the kill: {describe(left)}")

def checkpoint_state(out: Path):
    ck = out / 'checkpoints'
    files = sorted((str(f.relative_to(ck)), f.stat().st_size) for f in ck.rglob('*')) if ck.exists() else []
    return files, (out / 'metrics.jsonl').stat().st_size

@pytest.fixture
def runs(tmp_path):
    "Yields `tmp_path`; afterwards kills whatever process of any run under it is still alive (so a failure leaves no orphans)."
    yield tmp_path
    for q in psutil.process_iter():
        try:
            if str(tmp_path) in ' '.join(q.cmdline()) and q.pid != os.getpid(): q.kill()
        except psutil.Error: pass



def test_misspelt_names_fail_by_name():
    "A misspelt run parameter or `model_overrides` field stops `resolve_run`, before any process starts, naming the field meant."
    from hybridslm.train.launch import resolve_run
    with pytest.raises(ValueError, match=r"'save_evry' \(did you mean 'save_every'\?\)"): resolve_run({**RUN, 'save_evry': 2})
    with pytest.raises(ValueError, match=r"'d_modle'.*did you mean 'd_model'"):
        resolve_run({**RUN, 'model_overrides': {**RUN['model_overrides'], 'd_modle': 64}})
    assert resolve_run(RUN)['model_overrides'] == RUN['model_overrides']

@pytest.mark.parametrize('target', ['launcher', 'process group', 'agent'])
def test_sigkill_takes_every_rank_down(runs, target):
    "SIGKILL to the launcher, to its process group, or to torchrun's agent alone (OOM killer, `kill -9`)."
    out = runs / 'run'
    proc = start_launcher(out, new_session=target == 'process group')
    wait_for_steps(proc, out, 3)
    procs = the_run(proc, out)
    if target == 'launcher': os.kill(proc.pid, signal.SIGKILL)
    elif target == 'process group': os.killpg(proc.pid, signal.SIGKILL)
    else: next(q for q in procs if 'torch.distributed.run' in ' '.join(q.cmdline())).kill()
    took = assert_all_gone([q for q in procs if q.pid != proc.pid], out, within=5)     # the agent and both ranks
    assert proc.wait(timeout=60) == (-signal.SIGKILL if target != 'agent' else 1)     # with its agent gone, `launch` raises
    state = checkpoint_state(out)
    time.sleep(3)
    assert checkpoint_state(out) == state, "the run wrote checkpoints or metrics after its launcher was killed"
    assert not (out / 'result.json').exists()
    print(f"SIGKILL to the {target}: all {len(procs)} processes gone in {took:.1f} s, at step {steps_logged(out)}")
    if target != 'launcher': return
    # the same run again: resume='auto' picks the newest complete checkpoint and finishes
    n_lines, killed_at = len((out / 'metrics.jsonl').read_text().splitlines()), steps_logged(out)
    proc = start_launcher(out)
    assert proc.wait(timeout=240) == 0, (out / 'launcher.out').read_text()[-3000:]
    res = json.loads((out / 'result.json').read_text())
    assert [h['step'] for h in res['history']] == list(range(1, RUN['max_steps'] + 1))
    resumed = [json.loads(l)['step'] for l in (out / 'metrics.jsonl').read_text().splitlines()[n_lines:]]
    assert 1 < resumed[0] <= killed_at + 1 and resumed[-1] == RUN['max_steps'], resumed    # it went on from a checkpoint
    assert not run_processes(out)


SLOW = pytest.mark.skipif(not os.environ.get('HYBRIDSLM_SLOW_TESTS'), reason='slow: set HYBRIDSLM_SLOW_TESTS=1')

@pytest.mark.parametrize('launcher', ['torchrun', pytest.param('deepspeed', marks=SLOW)])
def test_sigterm_stops_the_run(runs, launcher):
    "SIGTERM to the launcher reaches every rank once (through torchrun's agent, or DeepSpeed's per-node launcher); the ranks save and stop, all exits."
    from hybridslm.train import loop
    from hybridslm.train.checkpoint import latest_checkpoint
    out = runs / 'run'
    proc = start_launcher(out, launcher=launcher)
    wait_for_steps(proc, out, 3)
    procs = the_run(proc, out)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    took = assert_all_gone(procs, out, within=5)
    log = (out / 'launch.log').read_text()
    assert rc == -signal.SIGTERM, f"launcher exit {rc}\n{log[-3000:]}"       # the signal's own course, once the run stopped
    forwarded = {'torchrun': 'closing signal SIGTERM', 'deepspeed': 'received SIGTERM'}[launcher]
    assert forwarded in log, log[-3000:]                                        # the agent passed it on to the ranks
    assert not (out / 'result.json').exists()
    at = steps_logged(out)
    if hasattr(loop, 'TrainingInterrupted'):                                    # the ranks finish the step and save it
        assert latest_checkpoint(out / 'checkpoints').name == f"step-{at:06d}", (sorted(os.listdir(out / 'checkpoints')), at)
    print(f"SIGTERM: launcher exited after {time.time() - t0:.1f} s, everything gone {took:.1f} s later, stopped at step {at}")


@SLOW
def test_killing_papermill_kills_the_run(runs):
    "papermill's kernel exits when papermill dies (ipykernel's parent poller); the kernel is `launch`'s process."
    pytest.importorskip('papermill')
    out = runs / 'run'
    params = {**RUN, 'out_dir': str(out), 'master_port': free_port(), 'require_beat_unigram': False, 'sample_tokens': 8}
    proc = subprocess.Popen([sys.executable, '-m', 'papermill', str(REPO / 'experiments' / 'train.ipynb'), str(runs / 'train.ipynb'),
                             '-k', 'python3', '--cwd', str(REPO), '-y', json.dumps(params)], cwd=REPO, env=ENV,
                            stdout=open(runs / 'papermill.out', 'w'), stderr=subprocess.STDOUT)
    out.mkdir(parents=True, exist_ok=True); (out / 'launcher.out').symlink_to(runs / 'papermill.out')
    wait_for_steps(proc, out, 3, timeout=300)
    procs = the_run(proc, out)
    assert any('ipykernel' in ' '.join(q.cmdline()) for q in procs), describe(procs)
    proc.kill(); proc.wait()
    took = assert_all_gone(procs, out, within=10)      # the kernel polls its parent once a second
    print(f"SIGKILL to papermill: kernel, agent and ranks gone in {took:.1f} s")
