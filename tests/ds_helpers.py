"""Shared by tests/test_train_deepspeed.py and its rank script tests/ds_zero_worker.py."""
from hybridslm.model import HybridForCausalLM

CFG = dict(vocab_size=256, d_model=32, layer_pattern='MA', n_heads=4, n_kv_heads=2, d_state=8, headdim=16, chunk_size=8)

class NaNAt(HybridForCausalLM):
    "Returns a NaN loss on forward call number `nan_at` (counted per process)."
    calls, nan_at = 0, -1
    def forward(self, *a, **k):
        out = super().forward(*a, **k)
        if NaNAt.calls == NaNAt.nan_at: out.loss = out.loss * float('nan')
        NaNAt.calls += 1
        return out
