"Hostile uses of LoRA and quantization: wrong loaders, partial targets, double wrapping, missing files, mixed-up order."
import copy, json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
from hybridslm.model.config import HybridConfig
from hybridslm.model import HybridForCausalLM
from hybridslm.post.lora import apply_lora, save_adapter, load_adapter, merge_lora, expected_lora_modules, LORA_TARGETS
from hybridslm.post.quantize import quantize_model, save_quantized, load_quantized, to_bf16

ROOT = Path(__file__).resolve().parent.parent

def tiny(pattern='MAMA', seed=0):
    torch.manual_seed(seed)
    return HybridForCausalLM(HybridConfig(vocab_size=512, d_model=64, layer_pattern=pattern, n_heads=4, n_kv_heads=2,
                                          d_state=16, headdim=16, chunk_size=16)).eval()

def snapshot(m):
    "Module structure and every parameter value: what a failed call must leave as it was."
    return [n for n, _ in m.named_modules()], {k: v.clone() for k, v in m.state_dict().items()}

def same(m, snap):
    names, sd = snap
    now = m.state_dict()
    return [n for n, _ in m.named_modules()] == names and now.keys() == sd.keys() and all(torch.equal(now[k], sd[k]) for k in sd)

# ---------------------------------------------------------------- 1. plain `from_pretrained` on a quantized folder

@pytest.mark.parametrize('scheme', ['int8', 'int4'])
def test_from_pretrained_on_quantized_folder_is_loud_in_process(tmp_path, scheme):
    from transformers import AutoModelForCausalLM
    qm = quantize_model(tiny(), scheme)
    d = save_quantized(qm, tmp_path / scheme)
    with pytest.raises(Exception, match='load_quantized'):
        AutoModelForCausalLM.from_pretrained(d)
    with pytest.raises(Exception, match='load_quantized'):
        HybridForCausalLM.from_pretrained(d)
    with pytest.raises(Exception, match='load_quantized'):
        AutoModelForCausalLM.from_pretrained(d, ignore_mismatched_sizes=True)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad(): assert torch.equal(load_quantized(d)(x).logits, qm(x).logits)   # the right loader still works

@pytest.mark.parametrize('how', ['import hybridslm', 'trust_remote_code', 'ignore_mismatched_sizes'])
def test_from_pretrained_on_quantized_folder_is_loud_in_a_fresh_process(tmp_path, how):
    """A fresh process never gets random weights: `import hybridslm` registers the refusal (even with
    ignore_mismatched_sizes, which would skip the guard tensor's size check), and a process that never imports the
    package reaches it through the checkpoint's auto_map (trust_remote_code)."""
    d = save_quantized(quantize_model(tiny(), 'int8'), tmp_path / 'q')
    load = {'import hybridslm': f"import hybridslm; AutoModelForCausalLM.from_pretrained({str(d)!r})",
            'trust_remote_code': f"AutoModelForCausalLM.from_pretrained({str(d)!r}, trust_remote_code=True)",
            'ignore_mismatched_sizes': f"import hybridslm; AutoModelForCausalLM.from_pretrained({str(d)!r}, ignore_mismatched_sizes=True)"}[how]
    code = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForCausalLM
        try: {load}
        except Exception as e: print('RAISED', type(e).__name__, str(e)[-200:]); sys.exit(0)
        print('LOADED'); sys.exit(1)""")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and 'RAISED' in r.stdout, r.stdout + r.stderr[-2000:]
    if how != 'trust_remote_code': assert 'load_quantized' in r.stdout, r.stdout

def test_load_quantized_reads_folders_written_without_the_refusal(tmp_path):
    "Folders saved before config.json had a quantization_config and the file a guard tensor still load."
    from safetensors import safe_open
    from safetensors.torch import save_file
    qm = quantize_model(tiny(), 'int4')
    d = save_quantized(qm, tmp_path / 'q')
    cfg = json.loads((d / 'config.json').read_text()); cfg.pop('quantization_config')
    (d / 'config.json').write_text(json.dumps(cfg))
    with safe_open(str(d / 'model.safetensors'), 'pt') as f:
        meta = dict(f.metadata()); tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors.pop(meta.pop('hybridslm_guard'))
    save_file(tensors, str(d / 'model.safetensors'), metadata=meta)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad(): assert torch.equal(load_quantized(d)(x).logits, qm(x).logits)

# ---------------------------------------------------------------- 2. LoRA targets, validation before touching the model

@pytest.mark.parametrize('targets,counts', [({'A': ('q_proj',)}, {'A': 2}),
                                            ({'A': LORA_TARGETS['A']}, {'A': 8}),
                                            ({'M': LORA_TARGETS['M']}, {'M': 4}),
                                            ({'mlp': ('up_proj', 'down_proj')}, {'mlp': 8})])
def test_lora_on_a_subset_of_layer_types(targets, counts):
    pm = apply_lora(tiny(), r=4, alpha=8, targets=targets)
    assert pm.lora_counts == counts
    from peft.tuners.lora import LoraLayer
    got = {n for n, m in pm.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    assert got == set().union(*expected_lora_modules(pm.get_base_model().config, targets).values())

@pytest.mark.parametrize('kw,msg', [(dict(targets={'A': ('q_proj',), 'X': ('q_proj',)}), 'unknown LoRA target kind'),
                                    (dict(targets={'A': ('in_proj',)}), 'in_proj'),
                                    (dict(targets={'A': ()}), 'empty'),
                                    (dict(targets={}), 'empty'),
                                    (dict(targets=('q_proj',)), 'dict'),
                                    (dict(targets={'A': 'q_proj'}), 'tuple'),
                                    (dict(r=0), 'r'),
                                    (dict(alpha=-1), 'alpha'),
                                    (dict(dropout=1.5), 'dropout'),
                                    (dict(no_such_option=3), 'no_such_option')])
def test_bad_lora_arguments_leave_the_model_unchanged(kw, msg):
    m = tiny(); snap = snapshot(m)
    with pytest.raises((ValueError, TypeError), match=msg): apply_lora(m, **kw)
    assert same(m, snap)

def test_lora_kind_absent_from_the_pattern_is_refused_up_front():
    m = tiny('MMMM'); snap = snapshot(m)
    with pytest.raises(ValueError, match="no 'A' layer"): apply_lora(m, targets={'A': ('q_proj',)})
    assert same(m, snap)

def test_apply_lora_twice_says_already_wrapped():
    pm = apply_lora(tiny(), r=4, alpha=8)
    with pytest.raises(ValueError, match='already'): apply_lora(pm)
    with pytest.raises(ValueError, match='already'): apply_lora(pm.get_base_model())   # the injected base, too

def test_subset_adapter_roundtrip_and_mismatched_base(tmp_path):
    pm = apply_lora(tiny(), r=4, alpha=8, targets={'M': LORA_TARGETS['M']}, init_lora_weights=False).eval()
    save_adapter(pm, tmp_path / 'ad')
    back = load_adapter(tiny(), tmp_path / 'ad').eval()
    assert back.lora_counts == {'M': 4}
    x = torch.randint(0, 512, (1, 10))
    with torch.no_grad(): assert torch.equal(back(input_ids=x).logits, pm(input_ids=x).logits)
    with pytest.raises(ValueError, match='different base model'): load_adapter(tiny('AMAM'), tmp_path / 'ad')
    with pytest.raises(ValueError, match='already'): load_adapter(back, tmp_path / 'ad')

# ---------------------------------------------------------------- 3. missing files, double quantization, wrong order

def test_adapter_folder_without_weights_is_file_not_found(tmp_path):
    save_adapter(apply_lora(tiny(), r=4, alpha=8), tmp_path / 'ad')
    for f in tmp_path.glob('ad/adapter_model.*'): f.unlink()
    base = tiny(); snap = snapshot(base)
    with pytest.raises(FileNotFoundError) as e: load_adapter(base, tmp_path / 'ad')
    assert str(tmp_path / 'ad') in str(e.value) and 'adapter_model.safetensors' in str(e.value)
    assert same(base, snap)
    with pytest.raises(FileNotFoundError, match='adapter_config.json'): load_adapter(tiny(), tmp_path / 'nowhere')

@pytest.mark.parametrize('first,second', [('int8', 'int8'), ('int8', 'int4'), ('int4', 'int8')])
def test_quantizing_twice_is_refused_up_front(first, second):
    qm = quantize_model(tiny(), first)
    with pytest.raises(ValueError, match='already quantized'): quantize_model(qm, second)

def test_quantize_a_peft_model_says_merge_first():
    pm = apply_lora(tiny(), r=4, alpha=8)
    with pytest.raises(ValueError, match='merge'): quantize_model(pm, 'int8')
    with pytest.raises(ValueError, match='merge'): quantize_model(pm.get_base_model(), 'int8')
    merged = merge_lora(pm)
    quantize_model(merged, 'int8')   # the documented order works

def test_quantized_model_where_float_weights_are_needed():
    qm = quantize_model(tiny(), 'int8')
    with pytest.raises(ValueError, match='float weights'): apply_lora(qm, r=4, alpha=8)
    with pytest.raises(ValueError, match='float weights'): to_bf16(qm)

def test_merge_and_save_adapter_need_a_wrapped_model(tmp_path):
    m = tiny()
    with pytest.raises(ValueError, match='not LoRA-wrapped'): merge_lora(m)
    with pytest.raises(ValueError, match='not LoRA-wrapped'): save_adapter(m, tmp_path / 'ad')
    assert not (tmp_path / 'ad').exists()

def test_float_model_sharing_its_config_with_a_quantized_one_is_still_float():
    a = tiny(); b = HybridForCausalLM(a.config).eval()
    quantize_model(b, 'int8')                              # sets config.quantization on the shared config object
    assert apply_lora(copy.deepcopy(a), r=4, alpha=8).lora_counts['A'] == 8
    quantize_model(a, 'int4')

def test_load_adapter_refuses_a_quantized_base(tmp_path):
    save_adapter(apply_lora(tiny(), r=4, alpha=8), tmp_path / 'ad')
    with pytest.raises(ValueError, match='float weights'): load_adapter(quantize_model(tiny(), 'int8'), tmp_path / 'ad')

@pytest.mark.parametrize('pattern,counts', [('MMMM', {'M': 8, 'mlp': 12}), ('AAAA', {'A': 16, 'mlp': 12})])
def test_default_targets_on_a_single_kind_pattern(tmp_path, pattern, counts):
    "The default targets cover the kinds the model has; naming an absent kind explicitly is still an error."
    pm = apply_lora(tiny(pattern), r=4, alpha=8)
    assert pm.lora_counts == counts
    save_adapter(pm, tmp_path / 'ad')
    assert load_adapter(tiny(pattern), tmp_path / 'ad').lora_counts == counts
