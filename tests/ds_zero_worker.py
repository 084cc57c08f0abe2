"""One rank of the ZeRO-equivalence test (tests/test_train_deepspeed.py): trains the same tiny model under
ZeRO stages 0, 1, 2 and 3 in turn (and ZeRO-3 on a model built partitioned) and writes each stage's per-step losses and final weights to OUT."""
import json, os, sys
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file

torch.set_num_threads(1)
out, stages = Path(sys.argv[1]), sys.argv[2].split(',')
from hybridslm.train.deepspeed import fit_deepspeed, init_distributed, zero3_init
from hybridslm.train.loop import TrainArgs, TokenSequences
from hybridslm.model.config import HybridConfig
import deepspeed

from ds_helpers import CFG, NaNAt
rank, world, dev = init_distributed()
rows = TokenSequences((np.arange(4096) * 7) % 256, 16)   # learnable: next = previous + 7 (mod 256)
for name in stages:
    # 'N' + stage: rank 0 alone gets a NaN loss in the 2nd micro-batch of step 2 (a partial accumulation window)
    # 'G' + stage: the same, but a finite loss whose gradients are NaN (the step must be skipped all the same)
    # 'I3': ZeRO-3 with the model built already partitioned (zero3_init), which must equal one built whole
    stage, nan = int(name.lstrip('NIG')), name[0] in 'NG'
    NaNAt.calls, NaNAt.nan_at, NaNAt.grad = 0, (3 if nan and rank == 0 else -1), name.startswith('G')
    torch.manual_seed(0)
    with zero3_init(name.startswith('I')): model = NaNAt(HybridConfig(**CFG))
    args = TrainArgs(max_steps=4, micro_batch=2, grad_accum=2, lr=3e-3, warmup=1, eval_every=0, precision='fp32',
                     progress=False)
    res = fit_deepspeed(model, rows, None, args, zero_stage=stage)
    engine = res.pop('engine')
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        sd = {n: p.detach().float().clone().contiguous() for n, p in engine.module.named_parameters()}
    if rank == 0:
        (out / f"zero{name}.json").write_text(json.dumps({'losses': [h['loss'] for h in res['history']], 'bad_steps': res['bad_steps'],
                                                          'bad_grad_steps': res['bad_grad_steps']}))
        save_file(sd, str(out / f"zero{name}.safetensors"))
    torch.distributed.barrier()
