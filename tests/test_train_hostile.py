"""Hostile inputs to training: every bad value, file or state is either refused with an error that names the field
or the file (and the value), or handled correctly (skipped, or a fallback with a warning) — never silently accepted.

Groups: TrainArgs fields; model overrides; token data; packed shards; plain checkpoints (flipped bytes, truncation,
missing files, malformed or mistyped state, bad manifests, foreign weights); the checkpoint directory; non-finite
gradients; resume semantics; metric logs; SIGTERM in a real process; DeepSpeed checkpoints (tests/ds_hostile_worker.py).
"""
import json, math, os, shutil, signal, socket, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, pytest, torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tests'))
from ds_helpers import CFG, NaNAt
from hybridslm.model.config import HybridConfig, check_config_overrides
from hybridslm.model import HybridForCausalLM
from hybridslm.train.loop import TrainArgs, TokenSequences, fit, fetch_batch, TrainingInterrupted
from hybridslm.train.checkpoint import (CheckpointError, list_checkpoints, load_checkpoint, verify_checkpoint,
                                        read_trainer_state, MANIFEST)
from hybridslm.train.monitor import RunLogger, read_jsonl
from hybridslm.data.pack import PackWriter, PackedTokenDataset

torch.set_num_threads(1)
ROWS = TokenSequences((np.arange(2048) * 7) % 256, 16)

def args(**kw):
    return TrainArgs(**{**dict(max_steps=2, micro_batch=2, lr=3e-3, warmup=1, eval_every=0, progress=False, precision='fp32'), **kw})

def model(cls=HybridForCausalLM, **over):
    torch.manual_seed(0); return cls(HybridConfig(**{**CFG, **over}))

# ---------------------------------------------------------------- TrainArgs: every field, bad values
BAD_ARGS = [('max_steps', 0), ('max_steps', -1), ('max_steps', 2.5), ('max_steps', True), ('max_steps', '10'),
            ('micro_batch', 0), ('micro_batch', None), ('grad_accum', 0), ('grad_accum', 1.0),
            ('lr', 0.0), ('lr', -1e-3), ('lr', float('nan')), ('lr', float('inf')), ('lr', '3e-4'),
            ('warmup', -1), ('warmup', 1.5), ('min_lr_ratio', -0.1), ('min_lr_ratio', 1.5), ('min_lr_ratio', float('nan')),
            ('weight_decay', -0.1), ('weight_decay', float('nan')), ('grad_clip', 0.0), ('grad_clip', -1.0),
            ('grad_clip', float('nan')), ('grad_clip', False), ('precision', 'fp16'), ('precision', None),
            ('eval_every', -1), ('eval_batches', 0), ('save_every', -5), ('keep_last', -1), ('log_every', 0),
            ('max_bad_steps', 0), ('time_budget_s', 0), ('time_budget_s', -1.0), ('time_budget_s', float('nan')),
            ('seed', -1), ('seed', 1.5), ('seed', True), ('out_dir', ''), ('out_dir', 123), ('resume', 5),
            ('progress', 'yes'), ('compile', 1), ('grad_checkpointing', None), ('peak_tflops', 0), ('peak_tflops', float('inf'))]

@pytest.mark.parametrize('field,value', BAD_ARGS, ids=[f"{f}={v!r}" for f, v in BAD_ARGS])
def test_bad_train_args(field, value):
    with pytest.raises(ValueError) as e: TrainArgs(**{field: value})
    assert f"TrainArgs.{field}" in str(e.value) and repr(value) in str(e.value), str(e.value)

def test_bad_resume_path_and_missing_out_dir(tmp_path):
    with pytest.raises(ValueError, match='no-such-checkpoint'): TrainArgs(resume=str(tmp_path / 'no-such-checkpoint'))
    with pytest.raises(ValueError, match='out_dir is required'): TrainArgs(save_every=10)
    assert TrainArgs(grad_clip=math.inf).grad_clip == math.inf            # documented: no clipping

def test_fit_rejects_non_trainargs():
    with pytest.raises(TypeError, match='TrainArgs'): fit(model(), ROWS, None, {'max_steps': 2})

# ---------------------------------------------------------------- model overrides
@pytest.mark.parametrize('over,named,suggest', [({'d_modle': 64}, 'd_modle', 'd_model'), ({'nheads': 4}, 'nheads', 'n_heads'),
                                                ({'layer_patern': 'MA'}, 'layer_patern', 'layer_pattern'), ({'zzz': 1}, 'zzz', None)])
def test_misspelt_override(over, named, suggest):
    with pytest.raises(ValueError) as e: check_config_overrides(over)
    assert repr(named) in str(e.value) and (suggest is None or repr(suggest) in str(e.value)), str(e.value)

def test_override_not_a_dict():
    with pytest.raises(ValueError, match='must be a dict'): check_config_overrides([('d_model', 64)])
    assert check_config_overrides({'d_model': 64, 'hidden_size': 64, 'tie_word_embeddings': False})

# ---------------------------------------------------------------- token data
@pytest.mark.parametrize('seq_len', [0, -1, 1, 2.5, True, None])
def test_bad_seq_len(seq_len):
    with pytest.raises(ValueError, match='seq_len') as e: TokenSequences(np.arange(100), seq_len)
    assert repr(seq_len) in str(e.value)

@pytest.mark.parametrize('tokens,match', [(np.linspace(0, 5, 100), 'integers'), (np.zeros((4, 25), int), '1-D'),
                                          (np.arange(-5, 95), '>= 0'), (np.arange(10), 'only 10 tokens')])
def test_bad_tokens(tokens, match):
    with pytest.raises(ValueError, match=match): TokenSequences(tokens, 16)

def test_out_of_vocab_row_is_named():
    rows = [torch.arange(16)] * 3 + [torch.full((16,), 999)]
    with pytest.raises(ValueError, match=r'row 3 .*token id 999.*\[0, 256\)'): fetch_batch(rows, [0, 3], 256)
    with pytest.raises(ValueError, match='row 1 .*same length'): fetch_batch([torch.arange(16), torch.arange(8)], [0, 1], 256)
    with pytest.raises(ValueError, match='row 0 .*integer'): fetch_batch([torch.rand(16)], [0], 256)
    # and in a real run: refused at the first batch, not an IndexError from inside the embedding
    bad = TokenSequences(np.full(64, 300), 16)
    with pytest.raises(ValueError, match='token id 300'): fit(model(), bad, None, args())

def test_empty_val_data_and_too_small_train_data():
    with pytest.raises(ValueError, match='val_data has no rows'): fit(model(), ROWS, [], args())
    with pytest.raises(ValueError, match='fewer than one micro-batch'): fit(model(), TokenSequences(np.arange(16), 16), None, args())

# ---------------------------------------------------------------- packed shards
@pytest.fixture
def packed(tmp_path):
    w = PackWriter(tmp_path / 'packed', seq_len=16, vocab_size=256, eos_token_id=0, seqs_per_shard=8)
    rng = np.random.default_rng(0)
    for _ in range(40): w.add(rng.integers(1, 256, 30))
    w.close()
    return tmp_path / 'packed'

def _shard(p): return p / json.loads((p / 'index.json').read_text())['shards'][0]['file']

@pytest.mark.parametrize('damage,match', [
    (lambda f: f.write_bytes(b''), 'bytes'), (lambda f: f.write_bytes(f.read_bytes()[:-3]), 'truncated'),
    (lambda f: f.unlink(), 'missing'), (lambda f: f.write_bytes(f.read_bytes() + b'\0\0'), 'bytes')],
    ids=['empty', 'truncated', 'missing', 'too-long'])
def test_damaged_shard_named(packed, damage, match):
    f = _shard(packed); damage(f)
    with pytest.raises(ValueError, match=match) as e: PackedTokenDataset(packed)
    assert f.name in str(e.value)

def test_flipped_shard_bytes(packed):
    f = _shard(packed); raw = bytearray(f.read_bytes()); raw[1] ^= 0xFF; f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match='sha256'): PackedTokenDataset(packed, verify=True)
    ds = PackedTokenDataset(packed)                        # size is right: found when the row is read
    with pytest.raises(ValueError, match=f'{f.name}.*vocab_size'): ds[0]

@pytest.mark.parametrize('edit,match', [
    (lambda ix: '{"format": ', 'not valid JSON'), (lambda ix: json.dumps([1, 2]), 'JSON object'),
    (lambda ix: json.dumps({**ix, 'seq_len': 0}), "'seq_len' = 0"), (lambda ix: json.dumps({**ix, 'dtype': 'float64'}), "'dtype'"),
    (lambda ix: json.dumps({**ix, 'shards': []}), "'shards'"), (lambda ix: json.dumps({**ix, 'eos_token_id': 999}), "'eos_token_id'"),
    (lambda ix: json.dumps({**ix, 'shards': [{'file': '../../etc/passwd', 'n_seqs': 1}]}), 'bare file name'),
    (lambda ix: json.dumps({**ix, 'shards': [{'file': ix['shards'][0]['file'], 'n_seqs': '8'}]}), 'n_seqs'),
    (lambda ix: json.dumps({**ix, 'format': 'other'}), 'format')],
    ids=['torn', 'list', 'seq_len', 'dtype', 'no-shards', 'eos', 'traversal', 'n_seqs-str', 'format'])
def test_bad_index(packed, edit, match):
    ix = json.loads((packed / 'index.json').read_text())
    (packed / 'index.json').write_text(edit(ix))
    with pytest.raises(ValueError, match=match): PackedTokenDataset(packed)

# ---------------------------------------------------------------- plain checkpoints
@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    "out_dir of a finished 2-step run with checkpoints at steps 1 and 2."
    out = tmp_path_factory.mktemp('pristine')
    fit(model(), ROWS, None, args(out_dir=str(out), save_every=1))
    return out

@pytest.fixture
def run_dir(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / 'run'); return tmp_path / 'run'

def newest(run_dir): return list_checkpoints(run_dir / 'checkpoints')[-1]

def flip(f, at=-9):
    raw = bytearray(f.read_bytes()); raw[at] ^= 0x5A; f.write_bytes(bytes(raw))

def _state(ck, edit):
    f = ck / 'trainer_state.json'; st = json.loads(f.read_text()); edit(st); f.write_text(json.dumps(st))

CORRUPT = {   # name: (damage to the newest checkpoint, text the error must contain)
    'flipped-tensor-bytes': (lambda ck: flip(ck / 'model.safetensors'), 'model.safetensors'),
    'truncated-safetensors': (lambda ck: (ck / 'model.safetensors').write_bytes((ck / 'model.safetensors').read_bytes()[:200]), 'model.safetensors'),
    'missing-optimizer': (lambda ck: (ck / 'optimizer.pt').unlink(), 'optimizer.pt'),
    'missing-rng': (lambda ck: (ck / 'rng.pt').unlink(), 'rng.pt'),
    'flipped-optimizer': (lambda ck: flip(ck / 'optimizer.pt', 100), 'optimizer.pt'),
    'torn-trainer-state': (lambda ck: (ck / 'trainer_state.json').write_text('{"step": 2, "hist'), 'trainer_state.json'),
    'manifest-not-json': (lambda ck: (ck / MANIFEST).write_text('nope'), MANIFEST),
    'manifest-bad-entry': (lambda ck: (ck / MANIFEST).write_text(json.dumps({'files': {'model.safetensors': {'size': '1'}}})), MANIFEST),
    'manifest-traversal': (lambda ck: (ck / MANIFEST).write_text(json.dumps({'files': {'../x': {'size': 1, 'sha256': 'a'}}})), 'outside'),
}
NO_MANIFEST_STATE = {   # the manifest removed too (a hand-edited state): the state checks must still name the field
    'state-no-sampler': (lambda st: st.pop('sampler'), "'sampler' is missing"),
    'state-step-str': (lambda st: st.update(step='2'), "'step' = '2'"),
    'state-sampler-neg': (lambda st: st['sampler'].update(pos=-4), "'sampler.pos' = -4"),
    'state-history-dict': (lambda st: st.update(history={}), "'history' = {}"),
    'state-step-mismatch': (lambda st: st.update(step=7), 'does not match its directory'),
    'state-bool-tokens': (lambda st: st.update(tokens=True), "'tokens' = True"),
}

@pytest.mark.parametrize('name', list(CORRUPT))
def test_corrupt_checkpoint_named_and_auto_falls_back(run_dir, name):
    damage, text = CORRUPT[name]
    ck = newest(run_dir); damage(ck)
    with pytest.raises(CheckpointError) as e: load_checkpoint(ck, model(), torch.optim.AdamW(model().parameters()))
    assert text in str(e.value), str(e.value)
    m = model()
    with pytest.warns(UserWarning, match='falling back'):
        r = fit(m, ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=3))
    assert r['step'] == 3 and r['history'][1]['step'] == 2 and len(r['history']) == 3   # resumed from step 1, redid 2

@pytest.mark.parametrize('name', list(NO_MANIFEST_STATE))
def test_bad_trainer_state_named(run_dir, name):
    edit, text = NO_MANIFEST_STATE[name]
    ck = newest(run_dir); _state(ck, edit); (ck / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match='trainer_state.json') as e:
        with pytest.warns(UserWarning, match='no manifest'):
            fit(model(), ROWS, None, args(out_dir=str(run_dir), resume=str(ck)))
    assert text in str(e.value), str(e.value)

def test_trainer_state_not_an_object(run_dir):
    ck = newest(run_dir); (ck / 'trainer_state.json').write_text('[1, 2]'); (ck / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match='JSON object'): read_trainer_state(ck)

def test_legacy_checkpoint_without_manifest_loads_with_warning(run_dir):
    ck = newest(run_dir); (ck / MANIFEST).unlink()
    with pytest.warns(UserWarning, match='no manifest'): assert verify_checkpoint(ck) is False
    with pytest.warns(UserWarning, match='no manifest'):
        assert fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=3))['step'] == 3

def test_all_checkpoints_corrupt(run_dir):
    for ck in list_checkpoints(run_dir / 'checkpoints'): flip(ck / 'model.safetensors')
    with pytest.raises(CheckpointError, match='none of the 2 checkpoints'):
        with pytest.warns(UserWarning): fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto'))

def test_explicit_resume_of_corrupt_checkpoint_does_not_fall_back(run_dir):
    ck = newest(run_dir); flip(ck / 'model.safetensors')
    with pytest.raises(CheckpointError, match='sha256'): fit(model(), ROWS, None, args(out_dir=str(run_dir), resume=str(ck)))

def test_checkpoint_of_another_model(run_dir):
    with pytest.raises(RuntimeError, match='does not match the model'):
        fit(model(d_model=64), ROWS, None, args(out_dir=str(run_dir), resume='auto'))

# ---------------------------------------------------------------- the checkpoint directory
def test_unwritable_out_dir_fails_before_training(tmp_path):
    f = tmp_path / 'a-file'; f.write_text('x')
    seen = []
    with pytest.raises(ValueError, match='TrainArgs.out_dir.*cannot write') as e:
        fit(model(), ROWS, None, args(out_dir=str(f / 'run')), on_log=seen.append)
    assert str(f / 'run') in str(e.value) and seen == []
    if os.geteuid() != 0:                                  # root writes anywhere: the permission case needs a user
        ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o500)
        with pytest.raises(ValueError, match='cannot write'): fit(model(), ROWS, None, args(out_dir=str(ro)), on_log=seen.append)
        assert seen == []

def test_debris_cleaned_and_modes_consistent(run_dir, capsys):
    ck_dir = run_dir / 'checkpoints'
    (ck_dir / '.tmp-step-000003-0badf00d').mkdir(); (ck_dir / '.tmp-step-000003-0badf00d' / 'model.safetensors').write_bytes(b'x')
    (ck_dir / 'step-000009').mkdir()                      # a step dir without trainer_state.json
    fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=3))
    assert sorted(p.name for p in ck_dir.iterdir()) == ['step-000001', 'step-000002', 'step-000003']
    err = capsys.readouterr()
    assert '.tmp-step-000003-0badf00d' in err.out + err.err and 'step-000009' in err.out + err.err
    umask = os.umask(0); os.umask(umask)
    assert (ck_dir / 'step-000003').stat().st_mode & 0o777 == 0o777 & ~umask

# ---------------------------------------------------------------- non-finite gradients
@pytest.mark.parametrize('poison', ['nan', 'inf'])
def test_nonfinite_gradient_with_finite_loss_is_skipped(tmp_path, poison):
    class Bad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x): return x.view_as(x)
        @staticmethod
        def backward(ctx, g): return g * float(poison)
    class M(HybridForCausalLM):
        calls = 0
        def forward(self, *a, **k):
            out = super().forward(*a, **k)
            if self.training and M.calls == 1: out.loss = Bad.apply(out.loss)
            M.calls += self.training
            return out
    logs = []
    m = model(M)
    r = fit(m, ROWS, None, args(max_steps=3, out_dir=str(tmp_path)), on_log=logs.append)
    assert r['step'] == 3 and r['bad_grad_steps'] == 1 and all(torch.isfinite(p).all() for p in m.parameters())
    skipped = [l for l in logs if l.get('skipped')]
    assert len(skipped) == 1 and skipped[0]['nonfinite_grad'] == 1 and not math.isfinite(skipped[0]['grad_norm'])
    from safetensors.torch import load_file
    assert all(torch.isfinite(v).all() for v in load_file(list_checkpoints(tmp_path / 'checkpoints')[-1] / 'model.safetensors').values())

def test_abort_names_the_cause():
    NaNAt.calls, NaNAt.nan_at, NaNAt.grad = 0, -1, True
    class Always(NaNAt):
        def forward(self, *a, **k): NaNAt.nan_at = NaNAt.calls; return super().forward(*a, **k)
    with pytest.raises(FloatingPointError, match='3 consecutive steps.*non-finite gradient norm'):
        fit(model(Always), ROWS, None, args(max_steps=5, max_bad_steps=3))
    NaNAt.grad = False
    with pytest.raises(FloatingPointError, match='3 consecutive steps.*non-finite loss'):
        fit(model(Always), ROWS, None, args(max_steps=5, max_bad_steps=3))
    NaNAt.nan_at, NaNAt.grad = -1, False

# ---------------------------------------------------------------- resume semantics
def test_raised_max_steps_is_honoured(run_dir, capsys):
    r = fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=5))
    assert r['step'] == r['max_steps'] == 5 and [h['step'] for h in r['history']] == [1, 2, 3, 4, 5]
    from hybridslm.train.optim import lr_at
    assert r['history'][2]['lr'] == lr_at(2, 3e-3, 1, 5)
    c = capsys.readouterr(); assert 'max_steps 2 -> 5' in c.out + c.err

def test_lowered_max_steps_trains_nothing(run_dir, capsys):
    r = fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=1))
    c = capsys.readouterr(); assert r['step'] == 2 and len(r['history']) == 2 and 'nothing left to train' in c.out + c.err

@pytest.mark.parametrize('change', [dict(micro_batch=4), dict(grad_accum=2), dict(lr=1e-3), dict(warmup=0)])
def test_changed_settings_on_resume_warn(run_dir, change):
    (k, v), = change.items()
    with pytest.warns(UserWarning, match=f"{k} .* -> {v!r}"):
        fit(model(), ROWS, None, args(out_dir=str(run_dir), resume='auto', max_steps=3, **change))

# ---------------------------------------------------------------- metric logs
def test_replayed_steps_logged_once(tmp_path):
    lg = RunLogger(tmp_path, ['jsonl'])
    for s in range(1, 8): lg.log({'step': s, 'loss': 1.0})
    lg.close()
    lg = RunLogger(tmp_path, ['jsonl'])                   # resumed from a step-4 checkpoint
    for s in range(5, 9): lg.log({'step': s, 'loss': 2.0})
    lg.close()
    recs = read_jsonl(tmp_path / 'metrics.jsonl')
    assert [r['step'] for r in recs] == list(range(1, 9)) and [r['loss'] for r in recs] == [1.0] * 4 + [2.0] * 4

def test_corrupt_metrics_line_named(tmp_path):
    (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\nGARBAGE\n{"step": 2}\n')
    with pytest.raises(ValueError, match='line 2'): read_jsonl(tmp_path / 'metrics.jsonl')

# ---------------------------------------------------------------- SIGTERM in a real process
SIG_SCRIPT = r'''
import sys, numpy as np, torch
sys.path.insert(0, 'tests'); torch.set_num_threads(1)
from ds_helpers import CFG
from hybridslm.model.config import HybridConfig
from hybridslm.model import HybridForCausalLM
from hybridslm.train.loop import TrainArgs, TokenSequences, fit
torch.manual_seed(0)
rows = TokenSequences((np.arange(2048) * 7) % 256, 16)
def on_log(rec): print('STEP', rec['step'], flush=True)
fit(HybridForCausalLM(HybridConfig(**CFG)), rows, None, TrainArgs(max_steps=10_000, micro_batch=2, lr=3e-3, warmup=1,
    eval_every=0, progress=False, precision='fp32', out_dir=sys.argv[1], save_every=0), on_log=on_log)
'''

@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_finishes_step_checkpoints_and_exits(tmp_path, sig):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    p = subprocess.Popen([sys.executable, '-c', SIG_SCRIPT, str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seen = ''
    for line in p.stdout:
        seen += line
        if line.startswith('STEP 3'): break
    p.send_signal(sig)
    out = seen + p.communicate(timeout=120)[0]
    assert p.returncode == 128 + sig, out[-2000:]
    last = max(int(l.split()[1]) for l in out.splitlines() if l.startswith('STEP'))
    cks = list_checkpoints(tmp_path / 'checkpoints')
    assert [c.name for c in cks] == [f'step-{last:06d}'] and last >= 3, (last, cks, out[-1000:])
    assert verify_checkpoint(cks[-1]) and 'Traceback' not in out, out[-2000:]

def test_fit_in_a_thread_leaves_signals_alone():
    import threading
    before, res = signal.getsignal(signal.SIGTERM), []
    t = threading.Thread(target=lambda: res.append(fit(model(), ROWS, None, args()))); t.start(); t.join()
    assert res and res[0]['step'] == 2 and signal.getsignal(signal.SIGTERM) is before

# ---------------------------------------------------------------- DeepSpeed checkpoints (one process, gloo)
def test_deepspeed_hostile_checkpoints(tmp_path):
    pytest.importorskip('deepspeed')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'OMP_NUM_THREADS': '1', 'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1',
           'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port), 'TORCH_EXTENSIONS_DIR': str(REPO / '.cache' / 'torch_extensions')}
    p = subprocess.run([sys.executable, str(REPO / 'tests' / 'ds_hostile_worker.py'), str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    res = json.loads((tmp_path / 'results.json').read_text())
    assert len(res) >= 6
    for name, r in res.items(): assert r['ok'], (name, r)
