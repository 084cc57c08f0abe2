"""One rank of the SIGTERM test (tests/test_train_deepspeed.py): rank 0, after logging step 2, sends SIGTERM to rank 1
only; both ranks must stop after the same step, checkpoint together and exit with 128 + SIGTERM."""
import json, os, signal, sys, time
from pathlib import Path
import numpy as np, torch

torch.set_num_threads(1)
out = Path(sys.argv[1])
sys.path.insert(0, str(Path(__file__).parent))
from ds_helpers import CFG
from hybridslm.model.config import HybridConfig
from hybridslm.model import HybridForCausalLM
from hybridslm.train.loop import TrainArgs, TokenSequences, TrainingInterrupted
from hybridslm.train.deepspeed import fit_deepspeed, init_distributed

rank, world, dev = init_distributed()
(out / f"pid{rank}").write_text(str(os.getpid()))
torch.distributed.barrier()
rows = TokenSequences((np.arange(4096) * 7) % 256, 16)
def on_log(rec):                                   # called on rank 0 only
    if rec.get('step') == 2 and 'loss' in rec: os.kill(int((out / 'pid1').read_text()), signal.SIGTERM)
torch.manual_seed(0)
try:
    fit_deepspeed(HybridForCausalLM(HybridConfig(**CFG)), rows, None,
                  TrainArgs(max_steps=200, micro_batch=2, lr=3e-3, warmup=1, eval_every=0, progress=False, precision='fp32',
                            out_dir=str(out / 'run')), zero_stage=2, on_log=on_log)
except TrainingInterrupted as e:
    (out / f"stopped{rank}.json").write_text(json.dumps({'step': e.step, 'checkpoint': str(e.checkpoint), 'signum': e.signum}))
    raise
