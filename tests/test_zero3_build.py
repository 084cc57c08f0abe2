"""ZeRO-3 without ever holding the whole model on a rank (gloo, 2 CPU processes):

* the model a ZeRO-3 run builds (`build_model(..., zero3=True)`, the call `run_worker` makes when `zero_stage=3`) is
  partitioned at construction: on every rank every parameter's local data is empty and its ZeRO partition is
  ceil(numel / 2) elements; gathered, its weights equal, bit for bit, the model built whole from the same seed
  (the HF init runs on gathered whole tensors, in the same order, so equality is exact, not statistical);
* `zero3_from_pretrained` loads a several-shard safetensors directory (`save_pretrained(max_shard_size=...)`) the same
  way: each rank ends up with its partitions only, and the gathered weights equal the saved ones exactly;
* after a real ZeRO-3 step (bf16 autocast), the optimiser state each rank holds is what `zero3_memory_per_rank`
  counts: fp32 parameters, DeepSpeed's fp32 master copy of them (it keeps one even though the parameters are
  already fp32), fp32 gradients and Adam's two moments, 1/2 of the model each;
  the only parameters a rank then holds whole are those DeepSpeed keeps whole by design (<= 1e5 elements), and
  their bytes are the estimate's `persistent` term;
* a ZeRO-3 run started the way `experiments/train.ipynb` starts one (`launch` -> torchrun -> `run_worker`, 2 ranks)
  trains, prints the per-rank estimate and keeps it in `result.json`, and its HF checkpoint loads.
"""
import json, math
from pathlib import Path
import pytest, torch

pytest.importorskip('deepspeed')
REPO = Path(__file__).resolve().parents[1]
from ds_helpers import ENV, free_port, spawn
RUN = dict(preset='demo', layer_pattern='MA', seq_len=16, num_gpus=2, zero_stage=3, seed=0, log_to='',
           model_overrides=dict(d_model=64, n_heads=4, n_kv_heads=2, d_state=16, headdim=16, chunk_size=16))

PERSIST = 100_000     # DeepSpeed's stage3_param_persistence_threshold: smaller parameters stay whole after the first forward

def assert_partitioned(held: dict, whole: dict, world: int, what: str):
    assert set(held) == set(whole), what
    for n, h in held.items():
        assert h['full'] == whole[n], f"{what}: {n} is {h['full']} elements, the whole model's {whole[n]}"
        assert h['local'] == (whole[n] if h['persist'] else 0), f"{what}: {n} holds {h['local']} elements locally (not partitioned)"
        assert not h['persist'] or whole[n] <= PERSIST, f"{what}: {n} ({whole[n]} elements) kept whole"
        assert h['part'] == math.ceil(whole[n] / world), f"{what}: {n} partition {h['part']} of {whole[n]}"

def test_zero3_build_and_sharded_load_partitioned(tmp_path):
    from safetensors.torch import load_file
    from hybridslm.train.launch import resolve_run, build_model
    from hybridslm.train.deepspeed import zero3_memory_per_rank
    from hybridslm.data.tokenizer import load_tokenizer
    torch.set_num_threads(1)
    p = resolve_run(RUN)
    tok = load_tokenizer(p['tokenizer'])
    _, ref = build_model(p, tok, len(tok))                               # whole, seed 0: what ZeRO-3 must reproduce
    cfg, other = build_model({**p, 'seed': 1}, tok, len(tok))            # whole, seed 1: saved sharded, then loaded
    hf = tmp_path / 'hf'
    other.save_pretrained(hf, max_shard_size='300KB')
    n_shards = len(json.loads((hf / 'model.safetensors.index.json').read_text())['weight_map'] and list(hf.glob('model-*.safetensors')))
    assert n_shards >= 3, n_shards
    spawn([str(REPO / 'tests' / 'zero3_build_worker.py'), str(tmp_path), str(hf), json.dumps(RUN)])

    whole = {n: q.numel() for n, q in ref.named_parameters()}
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, rec in enumerate(recs):
        for k in ('built', 'loaded', 'loaded_after_gather', 'trained'): assert_partitioned(rec[k], whole, 2, f"rank {r} {k}")
    built, loaded = load_file(tmp_path / 'built.safetensors'), load_file(tmp_path / 'loaded.safetensors')
    differ = [n for n, q in ref.named_parameters() if not torch.equal(built[n], q)]
    assert not differ, f"ZeRO-3 build differs from the whole build (seed 0) in {differ[:5]}"
    differ = [n for n, q in other.named_parameters() if not torch.equal(loaded[n], q)]
    assert not differ, f"loaded weights differ from the saved ones in {differ[:5]}"
    assert any(not torch.equal(built[n], loaded[n]) for n in built)     # two different models, so the checks can fail

    est = zero3_memory_per_rank(cfg, 2)
    n = sum(whole.values()); assert est['n_params'] == n
    for r, rec in enumerate(recs):
        s = rec['states']
        assert s['param_dtype'] == 'torch.float32', s
        parts = 4 * sum(h['part'] for h in rec['trained'].values())                    # per-tensor ceil(numel / 2)
        assert s['params'] == s['master_copy'] == s['grads'] == parts and s['adam'] == 2 * parts, s
        s['master'] = s['master_copy']
        for k in ('params', 'master', 'grads', 'adam'):
            assert abs(s[k] - est[k]) <= 8 * len(whole) * (2 if k == 'adam' else 1), (k, s[k], est[k])
        assert math.isfinite(s['loss'])
        kept = 4 * sum(h['full'] for h in rec['trained'].values() if h['persist'])       # the small ones, whole after a step
        assert kept == est['persistent'] and not any(h['persist'] for h in rec['built'].values()), (kept, est['persistent'])
        print(f"rank {r}: params {s['params']:,} B, master copy {s['master']:,} B, grads {s['grads']:,} B, Adam {s['adam']:,} B; "
              f"estimate {est['params']:,} / {est['master']:,} / {est['grads']:,} / {est['adam']:,} B; {n_shards} shards loaded")


def test_zero3_run_through_launch(tmp_path):
    "The path `experiments/train.ipynb` takes with `zero_stage=3`: `launch` -> torchrun -> `run_worker` on 2 ranks."
    from hybridslm.train.launch import resolve_run, launch
    from hybridslm.train.deepspeed import zero3_from_pretrained
    from hybridslm.model.config import count_params
    p = resolve_run({**RUN, 'data': 'embedded:alice_in_wonderland', 'micro_batch': 2, 'grad_accum': 1, 'max_steps': 2,
                     'eval_every': 0, 'eval_batches': 1, 'time_budget_min': None, 'lr': 1e-3, 'warmup': 1, 'precision': 'fp32',
                     'out_dir': str(tmp_path), 'master_port': free_port()})
    res = launch(p, tmp_path, env=ENV, quiet=True)
    mem = res['zero3_memory_per_rank']
    assert res['step'] == 2 and res['zero_stage'] == 3 and res['world_size'] == 2 and mem['world_size'] == 2
    model = zero3_from_pretrained(res['hf_checkpoint'], enabled=False)
    assert mem['n_params'] == count_params(model.config) == sum(q.numel() for q in model.parameters())
    assert mem['model_states'] == 20 * math.ceil(mem['n_params'] / 2)
    assert f"ZeRO-3 on 2 ranks: {mem['model_states'] / 1e9:.2f} GB of model states per rank" in (tmp_path / 'launch.log').read_text()
