"""`hybridslm convert` as real subprocesses (the console-script path): a tiny random Bamba checkpoint through our format,
mamba_ssm's and back to Bamba, with the logits of every hop checked against transformers' `BambaForCausalLM`."""
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
import pytest, torch
from transformers import BambaConfig, BambaForCausalLM
from hybridslm.cli import main
from hybridslm.convert import from_pretrained_hybrid
from hybridslm.model import HybridForCausalLM

ROOT = Path(__file__).resolve().parents[1]

def convert(*args):
    "`hybridslm convert ...` in a subprocess; returns (returncode, stdout + stderr)."
    cmd = [sys.executable, '-c', 'import sys; from hybridslm.cli import main; sys.exit(main())', 'convert', *map(str, args)]
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr

@pytest.fixture(scope='module')
def bamba_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = BambaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head='auto',
                      mamba_d_state=16, mamba_chunk_size=8, pad_token_id=0)
    m = BambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.05)
    d = tmp_path_factory.mktemp('ckpt') / 'bamba'
    m.save_pretrained(d)
    return d, m

def logits(model, ids, am):
    with torch.no_grad(): return model(ids, attention_mask=am).logits

def test_convert_round_trip(bamba_dir, tmp_path):
    src, ref = bamba_dir
    ids = torch.randint(3, 96, (2, 11)); am = torch.ones_like(ids); am[1, :3] = 0
    want = logits(ref, ids, am)
    rc, out = convert(src, tmp_path / 'ours')
    assert rc == 0, out
    ours = HybridForCausalLM.from_pretrained(tmp_path / 'ours').eval()
    assert (logits(ours, ids, am) - want)[am.bool()].abs().max() < 1e-4
    rc, out = convert(tmp_path / 'ours', tmp_path / 'ms', '--to', 'mamba_ssm')
    assert rc == 0, out
    assert sorted(p.name for p in (tmp_path / 'ms').iterdir()) == ['config.json', 'pytorch_model.bin']
    rc, out = convert(tmp_path / 'ms', tmp_path / 'bamba2', '--to', 'bamba')
    assert rc == 0, out
    back = BambaForCausalLM.from_pretrained(tmp_path / 'bamba2').eval()
    sd, sd_ref = back.state_dict(), ref.state_dict()
    assert set(sd) == set(sd_ref) and all(torch.equal(sd[k], sd_ref[k]) for k in sd_ref)
    assert torch.equal(logits(back, ids, am), want)

def test_convert_refusals(bamba_dir, tmp_path):
    src, _ = bamba_dir
    # Bamba's rms_norm_eps (1e-5 here) is expressible in mamba_ssm only at 1e-5; 1e-6 is refused, naming the field
    cfg = json.loads((src / 'config.json').read_text()); cfg['rms_norm_eps'] = 1e-6
    (tmp_path / 'eps').mkdir()
    for f in src.iterdir(): (tmp_path / 'eps' / f.name).write_bytes(f.read_bytes())
    (tmp_path / 'eps' / 'config.json').write_text(json.dumps(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(['convert', str(tmp_path / 'eps'), str(tmp_path / 'out'), '--to', 'mamba_ssm']) == 2
    assert 'norm_eps=1e-06' in err.getvalue()
    # a mamba_ssm checkpoint whose pickle is not plain tensors: refused, and its payload never runs
    with contextlib.redirect_stdout(io.StringIO()): assert main(['convert', str(src), str(tmp_path / 'ms'), '--to', 'mamba_ssm']) == 0
    marker = tmp_path / 'payload-ran'
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save({'backbone.embedding.weight': Payload()}, tmp_path / 'ms' / 'pytorch_model.bin')
    rc, out = convert(tmp_path / 'ms', tmp_path / 'x')
    assert rc == 2 and 'refused: not a plain tensor state dict' in out, out
    assert not marker.exists() and not (tmp_path / 'x').exists()
    assert from_pretrained_hybrid(src).config.layer_pattern == 'MAM'
