"""One rank of tests/test_zero3_build.py: builds the run's model the way a ZeRO-3 run does (`build_model(zero3=True)`,
what `run_worker` calls), loads a sharded HF directory with `zero3_from_pretrained`, trains the built model one ZeRO-3
step, and writes to OUT what each rank held (partition sizes, optimiser-state bytes) and, from rank 0, the gathered weights."""
import json, sys
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file

torch.set_num_threads(1)
out, hf_dir, run = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
from hybridslm.train.deepspeed import init_distributed, zero3_from_pretrained, fit_deepspeed
from hybridslm.train.launch import resolve_run, build_model
from hybridslm.train.loop import TrainArgs, TokenSequences
from hybridslm.data.tokenizer import load_tokenizer
import deepspeed

rank, world, dev = init_distributed()
p = resolve_run(run)

def held(model) -> dict:
    "What this rank holds of each parameter: its local data, its ZeRO partition, the full size."
    return {n: dict(local=q.numel(), part=q.ds_tensor.numel() if hasattr(q, 'ds_tensor') else None,
                    full=getattr(q, 'ds_numel', None), persist=bool(getattr(q, 'ds_persist', False))) for n, q in model.named_parameters()}

def gathered(model) -> dict:
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {n: q.detach().clone().contiguous() for n, q in model.named_parameters()}

tok = load_tokenizer(p['tokenizer'])
cfg, built = build_model(p, tok, len(tok), zero3=p['zero_stage'] == 3)
rec = {'built': held(built)}
sd_built = gathered(built)
loaded = zero3_from_pretrained(hf_dir)
rec['loaded'] = held(loaded)
sd_loaded = gathered(loaded)
rec['loaded_after_gather'] = held(loaded)              # re-partitioned once the gather block ends

# one ZeRO-3 step (bf16 autocast, as on a GPU), then the optimiser's per-rank state
rows = TokenSequences(np.random.default_rng(0).integers(0, len(tok), 4096), 16)
res = fit_deepspeed(built, rows, None, TrainArgs(max_steps=1, micro_batch=2, grad_accum=1, lr=1e-3, warmup=1, eval_every=0,
                                                  precision='bf16', progress=False), zero_stage=3)
opt = res['engine'].optimizer
nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
rec['states'] = dict(
    params=nbytes(opt.fp16_partitioned_groups_flat),
    master_copy=nbytes(m for m, q in zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat)
                       if m.data_ptr() != q.data_ptr()),
    grads=nbytes([opt.grad_partitions_flat_buffer]),
    adam=nbytes(v for st in opt.optimizer.state.values() for k, v in st.items() if torch.is_tensor(v) and k != 'step'),
    param_dtype=str(opt.fp16_partitioned_groups_flat[0].dtype), loss=res['history'][-1]['loss'])
rec['trained'] = held(res['engine'].module)
(out / f"rank{rank}.json").write_text(json.dumps(rec))
if rank == 0:
    save_file(sd_built, str(out / 'built.safetensors'))
    save_file({k: v for k, v in sd_loaded.items()}, str(out / 'loaded.safetensors'))
torch.distributed.barrier()
