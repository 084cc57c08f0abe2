"""lm-eval scores a served model through `/v1/completions` (echo + logprobs, lm-eval's `local-completions` backend)
exactly as it scores the same model in process through the project's adapter."""
import os
import pytest
from serve_helpers import ThreadServer, make_checkpoint, MODEL

TASKS, LIMIT = ('arc_easy', 'piqa'), 12

def test_lm_eval_through_server_equals_in_process(tmp_path, monkeypatch):
    pytest.importorskip('lm_eval')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from hybridslm.eval.lm_eval import HybridSLMEvalLM, run_lm_eval
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=3)
    model, tok = AutoModelForCausalLM.from_pretrained(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)
    local = run_lm_eval(HybridSLMEvalLM(model=model, tokenizer=tok, batch_size=8), TASKS, LIMIT, bootstrap_iters=0)
    srv = ThreadServer(ckpt, api_keys=[])                         # lm-eval's local backend sends no key
    try:
        api = LocalCompletionsAPI(base_url=srv.url + '/v1/completions', model=MODEL, tokenizer_backend='huggingface',
                                  tokenizer=str(ckpt), tokenized_requests=True, max_length=256, max_retries=1)
        served = run_lm_eval(api, TASKS, LIMIT, bootstrap_iters=0)
        # item by item: the same log-likelihood and the same greedy flag as the in-process adapter
        from lm_eval.api.instance import Instance
        pairs = [('Question: What do plants need to grow?\nAnswer:', ' sunlight'), ('The cat sat on the', ' mat'),
                 ('1, 2, 3,', ' 4'), ('Once upon a time', ' there was a princess who lived in a castle.')]
        reqs = [Instance(request_type='loglikelihood', doc={}, arguments=pr, idx=i) for i, pr in enumerate(pairs)]
        got = api.loglikelihood(reqs, disable_tqdm=True)
        want = HybridSLMEvalLM(model=model, tokenizer=tok, batch_size=4).loglikelihood(reqs, disable_tqdm=True)
        for (a, ga), (b, gb) in zip(got, want):
            assert abs(a - b) < 1e-4 and ga == gb, (got, want)
    finally:
        srv.stop()
    for t in TASKS:
        for k in ('acc', 'acc_norm'):
            assert served[t][k] == local[t][k], (t, k, served[t], local[t])
    print({t: (served[t]['acc'], served[t]['acc_norm']) for t in TASKS})
