"Papermill smoke runs of the post-training experiments (tiny settings) and their parameter checking."
import json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
PM = [sys.executable, '-m', 'papermill', '-k', 'python3', '--no-progress-bar']

def run_pm(nb, out_nb, *params):
    args = [a for k, v in params for a in ('-p', k, str(v))]
    return subprocess.run(PM + [str(ROOT / 'experiments' / nb), str(out_nb)] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)

def test_finetune_smoke(tmp_path):
    r = run_pm('finetune.ipynb', tmp_path / 'ft.ipynb', ('base_model', tmp_path / 'none'), ('data_dir', 'data/instruct'),
               ('steps', 3), ('max_train', 24), ('heldout_alpaca', 4), ('heldout_seed_tasks', 4), ('seq_len', 64),
               ('n_samples', 1), ('max_new_tokens', 4), ('r', 8), ('alpha', 16), ('lr', 5e-3), ('out_dir', tmp_path / 'ft'))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / 'ft/metrics.json').read_text())
    assert m['lora_modules'] == {'A': 8, 'M': 4, 'mlp': 12}
    assert m['merged_vs_adapter_max_abs'] < 1e-3 and m['steps'] == 3
    # before/after are measured on the same held-out sets: the numbers exist and are finite cross-entropies
    assert set(m['loss_before']) == set(m['loss_after']) == {'heldout_alpaca', 'heldout_seed_tasks'}
    assert all(0 < v < 20 for v in list(m['loss_before'].values()) + list(m['loss_after'].values()))
    assert (tmp_path / 'ft/adapter/adapter_config.json').exists() and (tmp_path / 'ft/loss.png').exists()

def test_bench_quant_smoke(tmp_path):
    r = run_pm('bench_quant.ipynb', tmp_path / 'bq.ipynb', ('base_model', tmp_path / 'none'), ('variants', 'fp32,int8,int4'),
               ('ppl_ctx', 64), ('ppl_max_windows', 2), ('new_tokens', 2), ('repeats', 1), ('batch_big', 2),
               ('prompt_len', 8), ('out_dir', tmp_path / 'bq'))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / 'bq/results_cpu.json').read_text())
    res = s['results']
    assert all('error' not in v for v in res.values()), res
    assert res['int4']['disk_bytes'] < res['int8']['disk_bytes'] < res['fp32']['disk_bytes']
    assert res['int8']['mem_bytes'] < res['fp32']['mem_bytes']
    assert abs(res['int8']['ppl_delta_vs_fp32']) < 0.05 * res['fp32']['ppl']

@pytest.mark.parametrize('nb', ['finetune.ipynb', 'bench_quant.ipynb'])
def test_unknown_parameter_fails(tmp_path, nb):
    r = run_pm(nb, tmp_path / 'x.ipynb', ('stepz', 3))
    assert r.returncode != 0 and "unknown parameter(s) ['stepz']" in (r.stdout + r.stderr)
