"""One DeepSpeed process (gloo, CPU) for tests/test_train_hostile.py: a 2-step ZeRO-2 run with checkpoints at steps 1
and 2, then damaged copies of it; each case's verdict goes to OUT/results.json."""
import json, os, shutil, signal, sys, traceback, warnings
from pathlib import Path
import numpy as np, torch

torch.set_num_threads(1)
out = Path(sys.argv[1])
sys.path.insert(0, str(Path(__file__).parent))
from ds_helpers import CFG
from hybridslm.model.config import HybridConfig
from hybridslm.model import HybridForCausalLM
from hybridslm.train.loop import TrainArgs, TokenSequences, TrainingInterrupted
from hybridslm.train.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint, MANIFEST
from hybridslm.train.deepspeed import fit_deepspeed, ds_checkpoint_to_hf, init_distributed

init_distributed()
rows = TokenSequences((np.arange(2048) * 7) % 256, 16)
def args(**kw): return TrainArgs(**{**dict(max_steps=2, micro_batch=2, lr=3e-3, warmup=1, eval_every=0, progress=False,
                                           precision='fp32', save_every=1), **kw})
def model(): torch.manual_seed(0); return HybridForCausalLM(HybridConfig(**CFG))
def train(d, **kw): return fit_deepspeed(model(), rows, None, args(out_dir=str(d), **kw), zero_stage=2)

pristine = out / 'pristine'; train(pristine)
results = {}
def case(name):
    def deco(fn):
        d = out / name; shutil.copytree(pristine, d)
        ck = list_checkpoints(d / 'checkpoints')[-1]
        try: msg = fn(d, ck); results[name] = {'ok': True, 'msg': msg}
        except Exception: results[name] = {'ok': False, 'msg': traceback.format_exc()[-1500:]}
    return deco

def expect(exc, text, fn):
    try: fn()
    except exc as e:
        assert text in str(e), f"{text!r} not in {e}"; return str(e)
    raise AssertionError(f"no {exc.__name__} ({text})")

def flip(f, at=200):
    raw = bytearray(f.read_bytes()); raw[at] ^= 0x5A; f.write_bytes(bytes(raw))

def edit_state(ck, fn):
    f = ck / 'trainer_state.json'; st = json.loads(f.read_text()); fn(st); f.write_text(json.dumps(st)); (ck / MANIFEST).unlink()

@case('missing-model-states')
def _(d, ck):
    (ck / 'ds' / 'mp_rank_00_model_states.pt').unlink()
    m1 = expect(CheckpointError, 'mp_rank_00_model_states.pt', lambda: train(d, resume=str(ck)))
    m2 = expect(CheckpointError, 'mp_rank_00_model_states.pt', lambda: ds_checkpoint_to_hf(ck, d / 'hf'))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        r = train(d, resume='auto', max_steps=3)
    assert r['step'] == 3 and any('falling back' in str(x.message) for x in w), [str(x.message) for x in w]
    return m1

@case('legacy-missing-model-states')
def _(d, ck):
    (ck / MANIFEST).unlink(); (ck / 'ds' / 'mp_rank_00_model_states.pt').unlink()
    return expect(CheckpointError, 'model_states', lambda: train(d, resume=str(ck)))

@case('flipped-optimizer-shard')
def _(d, ck):
    shard = next((ck / 'ds').glob('*optim_states.pt')); flip(shard)
    expect(CheckpointError, shard.name, lambda: ds_checkpoint_to_hf(ck, d / 'hf'))
    return expect(CheckpointError, shard.name, lambda: train(d, resume=str(ck)))

@case('state-without-sampler')
def _(d, ck):
    edit_state(ck, lambda st: st.pop('sampler'))
    return expect(CheckpointError, "'sampler' is missing", lambda: train(d, resume=str(ck)))

@case('state-world-size')
def _(d, ck):
    edit_state(ck, lambda st: st.update(world_size=2))
    return expect(CheckpointError, 'written by 2 processes', lambda: train(d, resume=str(ck)))

@case('state-zero-stage-type')
def _(d, ck):
    edit_state(ck, lambda st: st.update(zero_stage='two'))
    return expect(CheckpointError, "'zero_stage' = 'two'", lambda: ds_checkpoint_to_hf(ck, d / 'hf'))

@case('manifest-and-debris')
def _(d, ck):
    assert verify_checkpoint(ck)
    (d / 'checkpoints' / '.tmp-step-000003-deadbeef').mkdir()
    r = train(d, resume='auto', max_steps=3)
    assert r['step'] == 3 and not list((d / 'checkpoints').glob('.tmp-*'))
    modes = {oct(p.stat().st_mode & 0o777) for p in (d / 'checkpoints').iterdir()}
    umask = os.umask(0); os.umask(umask)
    assert modes == {oct(0o777 & ~umask)}, modes
    return str(modes)

@case('unwritable-out-dir')
def _(d, ck):
    f = d / 'a-file'; f.write_text('x')
    return expect(ValueError, 'cannot write', lambda: train(f / 'sub'))

@case('sigterm')
def _(d, ck):
    def on_log(rec):
        if rec.get('step') == 1 and 'loss' in rec: os.kill(os.getpid(), signal.SIGTERM)
    try: fit_deepspeed(model(), rows, None, args(out_dir=str(d / 'sig'), max_steps=50, save_every=0), zero_stage=2, on_log=on_log)
    except TrainingInterrupted as e:
        assert e.step == 1 and e.code == 143 and e.checkpoint.name == 'step-000001' and verify_checkpoint(e.checkpoint), e
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        return str(e)
    raise AssertionError('not interrupted')

(out / 'results.json').write_text(json.dumps(results, indent=1))
print(json.dumps({k: v['ok'] for k, v in results.items()}))
