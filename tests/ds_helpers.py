"""Shared by the DeepSpeed tests (tests/test_train_deepspeed.py, tests/test_zero3_build.py, ...) and their rank scripts."""
import os, socket, subprocess, sys
from pathlib import Path
import torch
from hybridslm.model import HybridForCausalLM

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed on the CPU: gloo, one thread per rank, its JIT-compiled ops cached in the repo's .cache
ENV = {**os.environ, 'DS_ACCELERATOR': 'cpu', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
       'TORCH_EXTENSIONS_DIR': str(REPO / '.cache' / 'torch_extensions')}

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def spawn(argv, world=2, timeout=240):
    "Run `python argv` as `world` ranks (the env a launcher would set) and wait for all of them; each must exit 0."
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**ENV, 'RANK': str(r), 'LOCAL_RANK': str(r), 'WORLD_SIZE': str(world),
                                   'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}) for r in range(world)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs): assert p.returncode == 0, log[-3000:]

CFG = dict(vocab_size=256, d_model=32, layer_pattern='MA', n_heads=4, n_kv_heads=2, d_state=8, headdim=16, chunk_size=8)

class _NaNGrad(torch.autograd.Function):
    "Identity forward; NaN gradient backward: a finite loss whose gradients are all NaN."
    @staticmethod
    def forward(ctx, x): return x.view_as(x)
    @staticmethod
    def backward(ctx, g): return g * float('nan')

class NaNAt(HybridForCausalLM):
    "On forward call number `nan_at` (counted per process) returns a NaN loss, or with `grad` a finite loss with NaN gradients."
    calls, nan_at, grad = 0, -1, False
    def forward(self, *a, **k):
        out = super().forward(*a, **k)
        if NaNAt.calls == NaNAt.nan_at: out.loss = _NaNGrad.apply(out.loss) if NaNAt.grad else out.loss * float('nan')
        NaNAt.calls += 1
        return out
