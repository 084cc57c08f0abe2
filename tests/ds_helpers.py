"""Shared by tests/test_train_deepspeed.py and its rank script tests/ds_zero_worker.py."""
import torch
from hybridslm.model import HybridForCausalLM

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
