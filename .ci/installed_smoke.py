"""The package on its own: run by .ci/run from a temporary directory against a non-editable install of the checkout.
The demo training (a few steps of the README's demo run, on the corpus that ships with the package), generation from
the demo checkpoint, and one benchmark on the package's subsets; nothing may be read from the repository.
Usage: python installed_smoke.py [DEMO_CHECKPOINT_DIR]"""
import json, sys, tempfile
from pathlib import Path

import hybridslm
here = Path(hybridslm.__file__).resolve()
repo = Path(__file__).resolve().parents[1]
assert here.parent != (repo / 'hybridslm').resolve(), f"hybridslm imported from the checkout's source {here.parent}"

import torch
from hybridslm.data.tokenizer import CORPUS_DIR, load_tokenizer
from hybridslm.eval.data import BENCHMARKS_DIR
assert CORPUS_DIR.is_relative_to(here.parent) and sorted(CORPUS_DIR.glob('*.txt.gz')), f"no corpus in {CORPUS_DIR}"
assert BENCHMARKS_DIR.is_relative_to(here.parent) and (BENCHMARKS_DIR / 'arc').is_dir(), f"no benchmarks in {BENCHMARKS_DIR}"

# 1. the demo training, a few steps, in this (temporary) directory
from hybridslm.train.launch import resolve_run, load_run_data, build_model, train_args
from hybridslm.train.loop import fit
work = Path(tempfile.mkdtemp(prefix='hybridslm-smoke-'))
p = resolve_run(dict(max_steps=6, time_budget_min=None, out_dir=str(work / 'run'), log_to='', eval_every=3,
                     eval_batches=2, final_eval_batches=2, sample_tokens=8, require_beat_unigram=False))
tok = load_tokenizer(p['tokenizer'])
train_ds, val_ds, _, _, vocab = load_run_data(p, tok, work)
cfg, model = build_model(p, tok, vocab)
res = fit(model, train_ds, val_ds, train_args(p, work / 'run'), tokenizer=tok)
losses = [h['loss'] for h in res['history']]
assert len(losses) == 6 and all(l == l and l < 20 for l in losses), losses
print(f"demo training: 6 steps from {work}, loss {losses[0]:.2f} -> {losses[-1]:.2f}")

# 2. generation from the README demo's checkpoint
from hybridslm.model import HybridForCausalLM
if len(sys.argv) > 1: ck = Path(sys.argv[1])
else: ck = work / 'ckpt'; model.save_pretrained(ck); tok.save_pretrained(ck)      # no demo checkpoint given: this run's
m = HybridForCausalLM.from_pretrained(ck).eval()
t = load_tokenizer(str(ck)) if (ck / 'tokenizer.json').exists() else tok
ids = t('It was a dark and stormy night', return_tensors='pt').input_ids
with torch.no_grad(): out = m.generate(ids, max_new_tokens=16, do_sample=False)
text = t.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
assert out.shape[1] > ids.shape[1] and text.strip(), out
print(f"generation: {text!r}")

# 3. one benchmark on the package's subset
from hybridslm.eval.harness import LMScorer, evaluate
from hybridslm.eval.harness import HEADLINE
r = evaluate(LMScorer(m, t, progress=False), tasks=('arc_easy',), limit=20)['arc_easy']
acc = r['metrics'][HEADLINE['arc_easy']]
assert r['n'] == 20, r['n']
assert 0 <= acc <= 1, r
print(f"arc_easy (20 items of the shipped subset): acc {acc:.2f}")
print(json.dumps({'installed_at': str(here.parent), 'ok': True}))
