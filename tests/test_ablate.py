"""experiments/ablate_layer_pattern.ipynb and experiments/sweep_ablate.py at CPU smoke scale, so neither can rot:
the MQAR grid (both phases) in the notebook, an LM run on the embedded corpus, the sweep driver's MQAR grid with
runs as separate processes plus its report, and bad parameters / patterns failing loudly before anything runs."""
import json, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
NB = str(REPO / 'experiments' / 'ablate_layer_pattern.ipynb')
SWEEP = str(REPO / 'experiments' / 'sweep_ablate.py')
ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}

def run_nb(tmp_path, **params):
    papermill = pytest.importorskip('papermill')
    return papermill.execute_notebook(NB, str(tmp_path / 'ablate.ipynb'), kernel_name='python3', cwd=str(REPO),
                                      parameters={'device': 'cpu', 'cpu_threads': 1, 'out_dir': str(tmp_path / 'run'), **params},
                                      progress_bar=False)

def _driver():
    import importlib.util
    spec = importlib.util.spec_from_file_location('sweep_ablate', SWEEP)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

def sweep(*args, timeout=600):
    import os
    return subprocess.run([sys.executable, SWEEP, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV})

def test_mqar_notebook_cpu_smoke(tmp_path):
    "The documented CPU profile: the whole grid (lr phase, seed phase), tables, the paper's plots, and no verdict."
    run_nb(tmp_path, profile='cpu-smoke', patterns=['MM', 'MA'])
    out = tmp_path / 'run'
    res = json.loads((out / 'results.json').read_text())
    assert res['task'] == 'mqar' and res['complete'] and res['protocol']['profile'] == 'cpu-smoke'
    rs = res['results']
    from hybridslm.research.ablate_fast import FAIL_ACC, is_solved
    grid = set(res['protocol']['lrs'])                        # 3e-3, 1e-2; + a step beyond an unsolved best edge, both if nothing learned
    for pat in ('MA', 'MM'):
        lrs = sorted(r['lr'] for r in rs if r['pattern'] == pat and r['phase'] == 'lr')
        on_grid = [r for r in rs if r['pattern'] == pat and r['phase'] == 'lr' and r['lr'] in grid]
        best = max(on_grid, key=lambda r: (-1.0 if r.get('diverged') else r['val_acc'], -r['lr']))   # ties: the smaller lr
        want = set()
        if not is_solved(best, res['protocol']['stop_acc']):
            if best['lr'] == min(grid) or best['val_acc'] < FAIL_ACC: want.add(1e-3)
            if best['lr'] == max(grid) or best['val_acc'] < FAIL_ACC: want.add(3e-2)
        assert grid <= set(lrs) and set(lrs) - grid == want, (pat, lrs, best['lr'], best['val_acc'])
        assert sum(r['pattern'] == pat and r['phase'] == 'seed' for r in rs) == 1
    chosen = {c['pattern']: c['lr'] for c in res['chosen_lr']}
    assert all(r['lr'] == chosen[r['pattern']] for r in rs if r['phase'] == 'seed')    # seeds run at the chosen lr
    r = rs[0]
    assert set(r['acc_by_kv']) == {'2', '4'} and 0 <= r['val_acc'] <= 1 and r['examples_seen'] == r['steps'] * r['batch'] and r['tok_per_s'] > 0
    for png in ('mqar_acc_vs_kv.png', 'mqar_acc_vs_dmodel.png', 'mqar_lr_sweep.png'): assert (out / png).stat().st_size > 5000
    assert 'Smoke test: no verdict' in (out / 'conclusion.md').read_text()

def test_lm_notebook(tmp_path):
    run_nb(tmp_path, task='lm', profile='cpu-smoke', patterns=['mamba', 'attention'], lm_max_chars=40_000)
    out = tmp_path / 'run'
    res = json.loads((out / 'results.json').read_text())
    rs = res['results']
    assert [(r['pattern'], r['seed']) for r in rs] == [('MM', 0), ('MM', 1), ('AA', 0), ('AA', 1)]
    assert all(r['steps'] == 3 and 0 < r['final_val_loss'] < 12 and r['tok_per_s'] > 0 for r in rs)
    counts = [r['params'] for r in rs]                        # LM matches total counts
    assert (max(counts) - min(counts)) / min(counts) < 0.01 and rs[2]['d_ff'] > rs[0]['d_ff']
    for png in ('lm_val_loss.png', 'lm_final_loss.png'): assert (out / png).stat().st_size > 5000
    assert 'Smoke test: no verdict' in (out / 'conclusion.md').read_text()   # a CPU run claims nothing

def test_unknown_parameter_and_bad_patterns_fail(tmp_path, capsys):
    "The notebook's own guard (its first cells, executed as papermill injects a parameter), and the driver's checks."
    import nbformat
    nb = nbformat.read(NB, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == 'code'][:3]
    assert 'parameters' in [c for c in nb.cells if c.cell_type == 'code'][1].metadata.get('tags', [])
    ns = {}
    exec(cells[0], ns); exec(cells[1], ns); exec('steps = 3\nkv_pair = [4]', ns)   # papermill's injected cell
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['kv_pair'\]"): exec(cells[2], ns)
    ns = {}; exec(cells[0], ns); exec(cells[1], ns); exec('steps = 3', ns); exec(cells[2], ns)   # a known one passes
    drv = _driver()                                                    # the driver's checks, in-process (no run starts)
    assert drv.main(['--task', 'lm', '--print-commands', '-p', 'stepz=3']) == 2
    assert "unknown notebook parameter(s) ['stepz']" in capsys.readouterr().err
    # every pattern is checked before any run starts, and the error names the bad ones and the valid choices
    assert drv.main(['--task', 'mqar', '--profile', 'cpu-smoke', '--name', 'x', '--runs-root', str(tmp_path), '--patterns', 'MM,MAMBA,M A']) == 2
    err = capsys.readouterr().err
    assert "'MAMBA', 'M A'" in err and 'letters M and A' in err and not (tmp_path / 'x').exists()
    assert drv.main(['--task', 'lm', '--print-commands', '--patterns', 'mamba,Mamba,seed']) == 2
    err = capsys.readouterr().err
    assert "'Mamba', 'seed'" in err and 'roadmap' in err
    assert drv.main(['--task', 'lm', '--print-commands', '--patterns', 'mamba,1in8', '--seeds', '0,1']) == 0
    cmds = capsys.readouterr().out.splitlines()
    assert len(cmds) == 4 and all('papermill' in c for c in cmds) and '1in8_s0' in cmds[1] and 'mamba_s1' in cmds[2]   # seed-major

def test_mqar_sweep_driver(tmp_path, capsys):
    "The driver's grid: runs as separate processes, resumable, aggregated, with the report notebook."
    pytest.importorskip('papermill')
    args = ['--task', 'mqar', '--profile', 'cpu-smoke', '--name', 'smoke', '--runs-root', str(tmp_path), '--jobs', '2',
            '--patterns', 'MA', '-s', 'lrs=[0.01]', '-s', 'seeds=[0]', '-s', 'epochs=1']
    p = sweep(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    root = tmp_path / 'smoke'
    assert sorted(f.name for f in (root / 'runs').glob('*.json')) == ['MA_d32_lr0.01_s0.json']
    res = json.loads((root / 'results.json').read_text())
    assert res['complete'] and len(res['results']) == 1 and 'Smoke test: no verdict' in (root / 'conclusion.md').read_text()
    import nbformat                                                    # the executed report shows the same verdict, cleaned
    text = (root / 'report.ipynb').read_text()
    assert 'Smoke test: no verdict' in text and str(REPO) not in text
    rep = nbformat.read(root / 'report.ipynb', as_version=4)
    assert not [o for c in rep.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.get('name') == 'stderr']
    assert _driver().main(args + ['--no-report']) == 0                 # resumes: nothing left to run
    assert 'phase 1 (learning rates): 1 runs, 1 already done' in capsys.readouterr().out
