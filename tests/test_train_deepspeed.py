"""Multi-process DeepSpeed training on CPU (gloo, 2 processes):

* ZeRO 0/1/2/3 reproduce plain single-process AdamW (`fit`) step by step, also when a NaN loss on one rank
  makes every rank drop a half-accumulated step, and when one rank back-propagates a NaN gradient from a finite
  loss (the step is skipped on every rank, the weights stay finite);
* a real training run killed with SIGKILL at a random moment and restarted with the same command (`resume='auto'`)
  finishes with bit-identical per-step losses and weights to an uninterrupted run; half-written checkpoint
  directories are ignored.
"""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch

pytest.importorskip('deepspeed')
REPO = Path(__file__).resolve().parents[1]
from ds_helpers import ENV, free_port, spawn


def test_zero_stages_match_plain_adamw(tmp_path):
    from safetensors.torch import load_file
    from hybridslm.train.loop import TrainArgs, TokenSequences, fit
    from hybridslm.model.config import HybridConfig
    spawn([str(REPO / 'tests' / 'ds_zero_worker.py'), str(tmp_path), '0,1,2,3,N0,N2,N3,I3,G0,G2,G3'])
    # reference: one process, plain torch AdamW, the same global batch (2 ranks x micro-batch 2 = 4 rows)
    torch.set_num_threads(1)
    from ds_helpers import CFG, NaNAt
    cfg = HybridConfig(**CFG)
    rows = TokenSequences((np.arange(4096) * 7) % 256, 16)   # learnable: next = previous + 7 (mod 256)
    def reference(nan_at=-1, grad=False):
        NaNAt.calls, NaNAt.nan_at, NaNAt.grad = 0, nan_at, grad
        torch.manual_seed(0); ref = NaNAt(cfg)
        res = fit(ref, rows, None, TrainArgs(max_steps=4, micro_batch=4, grad_accum=2, lr=3e-3, warmup=1, eval_every=0,
                                             precision='fp32', progress=False))
        return np.array([h['loss'] for h in res['history']]), {n: p.detach() for n, p in ref.named_parameters()}, res['bad_steps'], res['bad_grad_steps']
    base = reference(); refs = {s: base for s in ('0', '1', '2', '3', 'I3')}
    refs['N2'] = refs['N0'] = refs['N3'] = reference(nan_at=3)   # NaN guard: the whole window is dropped, no step, counted
    refs['G0'] = refs['G2'] = refs['G3'] = reference(nan_at=3, grad=True)    # a finite loss, NaN gradients: the same
    assert refs['N2'][2] == 1 and refs['0'][2] == 0 and not np.allclose(refs['N2'][0][1:], refs['0'][0][1:])
    assert refs['G2'][2] == refs['G2'][3] == 1 and np.allclose(refs['G2'][0], refs['N2'][0])
    assert refs['0'][0][-1] < refs['0'][0][0] - 0.01                 # it trains, so matching is not trivial
    for stage, (ref_losses, ref_sd, ref_bad, ref_bad_grad) in refs.items():
        rec = json.loads((tmp_path / f"zero{stage}.json").read_text())
        losses = np.array(rec['losses']); assert rec['bad_steps'] == ref_bad and rec['bad_grad_steps'] == ref_bad_grad, (stage, rec)
        sd = load_file(tmp_path / f"zero{stage}.safetensors")
        assert all(torch.isfinite(v).all() for v in sd.values()), f"ZeRO-{stage}: non-finite weights"
        # Same arithmetic up to float32 summation order (all-reduce of two half-batch gradients vs one batch,
        # ZeRO's flattened buffers): ~1e-7 relative per op. Adam normalises each update to ~lr, so weight
        # differences stay ~lr * 1e-4 over 4 steps; a real bug (wrong averaging, missed clip, skipped
        # accumulation, wrong LR) moves losses by >1e-3 and weights by ~lr = 3e-3.
        np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, err_msg=f"ZeRO-{stage} losses")
        worst = max((sd[n] - ref_sd[n]).abs().max().item() for n in ref_sd)
        assert worst < 3e-5, f"ZeRO-{stage}: max weight difference {worst}"
        print(f"ZeRO-{stage}: max |loss diff| {np.abs(losses - ref_losses).max():.2e}, max |weight diff| {worst:.2e}")


RUN = dict(data='embedded:alice_in_wonderland', layer_pattern='MA', seq_len=32, micro_batch=2, grad_accum=2,
           model_overrides=dict(d_model=64, n_heads=4, n_kv_heads=2, d_state=16, headdim=16, chunk_size=16),
           num_gpus=2, zero_stage=2, max_steps=10, save_every=2, keep_last=2, eval_every=0, eval_batches=2,
           time_budget_min=None, lr=3e-3, warmup=2, precision='fp32', log_to='', resume='auto')

def start_run(out: Path, **kw):
    from hybridslm.train.launch import resolve_run, launch_command
    p = resolve_run({**RUN, **kw, 'out_dir': str(out), 'master_port': free_port()})
    out.mkdir(parents=True, exist_ok=True)
    (out / 'run.json').write_text(json.dumps({k: v for k, v in p.items() if k != 'distributed'}))
    return subprocess.Popen(launch_command(p, out / 'run.json'), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

def finish(proc, timeout=240):
    log = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, log[-3000:]

def steps_logged(out: Path) -> int:
    p = out / 'metrics.jsonl'
    return max([json.loads(l)['step'] for l in p.read_text().splitlines() if '"loss"' in l], default=0) if p.exists() else 0


def test_sigkill_and_resume_is_exact(tmp_path):
    from safetensors.torch import load_file
    full, crash = tmp_path / 'full', tmp_path / 'crash'
    finish(start_run(full))
    # the same run, SIGKILLed at a random step, possibly in the middle of a checkpoint save
    kill_after = random.Random().randint(3, 8)
    proc = start_run(crash)
    t0 = time.time()
    while steps_logged(crash) < kill_after:
        assert proc.poll() is None and time.time() - t0 < 180, "run ended before it could be killed"
        time.sleep(0.02)
    # every process of the run at once: torchrun's agent and both ranks (each rank has a session of its own, so a
    # killpg of the agent's group would not reach them)
    import psutil
    def alive(q):
        try: return q.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess: return False
    run = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(run) >= 3, run
    for q in run:
        try: q.kill()
        except psutil.NoSuchProcess: pass
    proc.wait(); t0 = time.time()
    while any(map(alive, run)) and time.time() - t0 < 10: time.sleep(0.05)
    assert not any(map(alive, run)), f"survived SIGKILL: {[q for q in run if alive(q)]}"
    ck = crash / 'checkpoints'
    done = sorted(p.name for p in ck.glob('step-*'))
    assert not (crash / 'result.json').exists() and done, (kill_after, done)
    # debris of a save interrupted at a later step: a temp dir and a step dir without trainer_state.json
    for junk in ('.tmp-step-000012', 'step-000012'):
        (ck / junk / 'ds').mkdir(parents=True, exist_ok=True); (ck / junk / 'ds' / 'mp_rank_00_model_states.pt').write_bytes(b'\0' * 10)
    finish(start_run(crash))                                  # the same command again (resume='auto')
    a, b = (json.loads((d / 'result.json').read_text()) for d in (full, crash))
    assert [h['loss'] for h in a['history']] == [h['loss'] for h in b['history']] and len(a['history']) == 10
    from hybridslm.train.checkpoint import list_checkpoints
    assert [p.name for p in list_checkpoints(ck)] == ['step-000008', 'step-000010']      # keep_last=2
    wa, wb = (load_file(d / 'checkpoint' / 'model.safetensors') for d in (full, crash))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    print(f"killed after step {kill_after} (complete checkpoints then: {done}); resumed run bit-identical")


def test_sigterm_to_one_rank_stops_all_after_the_same_step(tmp_path):
    "SIGTERM reaching one rank only: both finish the same step, write one complete checkpoint and exit with 143."
    from hybridslm.train.checkpoint import list_checkpoints, verify_checkpoint
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(REPO / 'tests' / 'ds_signal_worker.py'), str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**ENV, 'RANK': str(r), 'LOCAL_RANK': str(r), 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1',
                                   'MASTER_PORT': str(port)}) for r in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs): assert p.returncode == 128 + signal.SIGTERM, log[-3000:]
    a, b = (json.loads((tmp_path / f"stopped{r}.json").read_text()) for r in range(2))
    assert a == b and a['step'] >= 2 and a['signum'] == signal.SIGTERM, (a, b)
    cks = list_checkpoints(tmp_path / 'run' / 'checkpoints')
    assert [c.name for c in cks] == [f"step-{a['step']:06d}"] and verify_checkpoint(cks[0])
