"""A/B of the Mamba decode step's state update on the CPU: the readout as `einsum` (before 2026-11-26) vs an explicit
product-and-sum (now), eager and compiled, interleaved in one process (the demo preset's shape, batch 1, 2 threads).

    python experiments/ab_state_update.py
"""
import time, torch, types
from hybridslm.model.config import HybridConfig
from hybridslm.model.mamba2 import Mamba2Mixer
import hybridslm.model.mamba2 as M
torch.set_num_threads(2); torch.manual_seed(0)
cfg = HybridConfig.from_preset('demo')
mix = [b for b in __import__('hybridslm.model', fromlist=['x']).HybridForCausalLM(cfg).model.layers if b.kind == 'M'][0].mixer.to(torch.bfloat16).eval()
print('nheads', mix.nheads, 'headdim', mix.headdim, 'd_state', mix.d_state)
def rec(st, dA, dtx, Bh, Ch, D, x, new):
    st = st.float() * dA[..., None, None] + dtx[..., None] * Bh[:, :, None]
    y = (st * Ch[:, :, None, :]).sum(-1) if new else torch.einsum('bhpn,bhn->bhp', st, Ch)
    return st.to(torch.bfloat16), y + D[:, None] * x
b, h, p, n = 1, mix.nheads, mix.headdim, mix.d_state
args = [torch.randn(b, h, p, n).bfloat16(), torch.rand(b, h), torch.randn(b, h, p), torch.randn(b, h, n), torch.randn(b, h, n), torch.randn(h), torch.randn(b, h, p)]
fns = {f'{"compiled" if c else "eager"}_{"sum" if nw else "einsum"}': (torch.compile(lambda *a, nw=nw: rec(*a, nw)) if c else (lambda *a, nw=nw: rec(*a, nw))) for c in (0, 1) for nw in (0, 1)}
for f in fns.values(): f(*args)
res = {k: [] for k in fns}
for rep in range(7):
    for k, f in fns.items():
        t = time.perf_counter()
        for _ in range(2000): f(*args)
        res[k].append((time.perf_counter() - t) / 2000 * 1e6)
for k, v in res.items(): print(k, 'median us', round(sorted(v)[3], 2), 'min', round(min(v), 2))
