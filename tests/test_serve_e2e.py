"""End to end: the server (real uvicorn on a loopback port, in a thread of this process; the `hybridslm serve`
subprocess path is tested in test_serve_workers.py) driven by the official `openai` client and raw httpx.
Outputs are checked against `model.generate(do_sample=False)` run alone."""
import json, threading, time
from concurrent.futures import ThreadPoolExecutor
import httpx, openai, pytest, torch
from tests.serve_helpers import API_KEY, MODEL, ThreadServer, make_checkpoint

torch.set_num_threads(1)

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    from transformers import AutoModelForCausalLM
    from hybridslm.data.tokenizer import load_tokenizer
    ckpt = make_checkpoint(tmp_path_factory.mktemp('serve') / 'ckpt')
    srv = ThreadServer(ckpt, max_batch=8, prefix_block=64, max_body_bytes=65536)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    tok = load_tokenizer(str(ckpt))
    client = openai.OpenAI(base_url=srv.url + '/v1', api_key=API_KEY, max_retries=0, timeout=60)
    yield dict(srv=srv, model=model, tok=tok, client=client, url=srv.url)
    srv.stop()

def ref_ids(env, ids, n, stop_ids=()):
    "Greedy continuation of `ids` by model.generate alone, cut at EOS / stop tokens."
    tok = env['tok']
    out = env['model'].generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                                eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    for i, t in enumerate(out):
        if t == tok.eos_token_id or t in stop_ids: return out[:i]
    return out

def ref_text(env, prompt, n): 
    tok = env['tok']
    return tok.decode(ref_ids(env, tok.encode(prompt), n), skip_special_tokens=True)

def chat_ids(env, messages):
    return env['tok'].apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)

PROMPTS = ['Once upon a time', 'The quick brown fox jumps over', 'In 1905, Einstein', 'def fib(n):\n    ',
           'Mamba is a state space model', 'Hello', 'A long time ago in a galaxy far, far away, there was', 'x']

def test_models_and_health(env):
    ids = [m.id for m in env['client'].models.list()]
    assert ids == [MODEL]
    assert httpx.get(env['url'] + '/health').json() == {'status': 'ok'}       # no key: liveness only
    h = env['srv'].health()
    assert h['status'] == 'ok' and h['model'] == MODEL

def test_completion_matches_generate(env):
    r = env['client'].completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert r.choices[0].text == ref_text(env, PROMPTS[0], 12)
    assert r.usage.prompt_tokens == len(env['tok'].encode(PROMPTS[0])) and r.usage.completion_tokens >= 1

def test_concurrent_requests_are_batched_and_exact(env):
    "8 clients at once (different prompt lengths, joining the running batch) each get their solo greedy output."
    def one(i):
        return env['client'].completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=10 + 2 * i, temperature=0)
    with ThreadPoolExecutor(8) as ex: outs = list(ex.map(one, range(8)))
    for i, r in enumerate(outs): assert r.choices[0].text == ref_text(env, PROMPTS[i], 10 + 2 * i), i

def test_chat_and_chat_stream(env):
    msgs = [{'role': 'system', 'content': 'You are a helpful assistant.'}, {'role': 'user', 'content': 'Name a colour.'}]
    im_end = env['tok'].convert_tokens_to_ids('<|im_end|>')
    want = env['tok'].decode(ref_ids(env, chat_ids(env, msgs), 10, [im_end]), skip_special_tokens=True)
    r = env['client'].chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == 'assistant' and r.choices[0].message.content == want
    assert r.choices[0].finish_reason in ('stop', 'length')
    chunks = list(env['client'].chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0,
                                                        stream=True, stream_options={'include_usage': True}))
    text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
    assert text == want
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices

def test_completion_stream_equals_non_stream(env):
    kw = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0)
    full = env['client'].completions.create(**kw).choices[0]
    chunks = list(env['client'].completions.create(stream=True, **kw))
    assert ''.join(c.choices[0].text for c in chunks) == full.text
    assert chunks[-1].choices[0].finish_reason == full.finish_reason and len(chunks) > 2

def test_stop_sequences(env):
    c = env['client']
    full = c.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and full.find(stop) > 0
    r = c.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=30, temperature=0, stop=[stop, '@@never@@'])
    assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == 'stop'
    s = c.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=30, temperature=0, stop=stop, stream=True)
    assert ''.join(ch.choices[0].text for ch in s) == full[:full.find(stop)]

def test_n_greater_than_one(env):
    c = env['client']
    r = c.completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=8, n=3, temperature=1.0, seed=5)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert len({ch.text for ch in r.choices}) > 1                     # different seeds, different samples
    r2 = c.completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=8, n=3, temperature=1.0, seed=5)
    assert [ch.text for ch in sorted(r.choices, key=lambda x: x.index)] == [ch.text for ch in sorted(r2.choices, key=lambda x: x.index)]
    g = c.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'hi'}], max_tokens=5, n=2, temperature=0)
    assert g.choices[0].message.content == g.choices[1].message.content
    with pytest.raises(openai.BadRequestError, match='n must be'):
        c.completions.create(model=MODEL, prompt='x', n=100)

def test_api_keys(env):
    bad = openai.OpenAI(base_url=env['url'] + '/v1', api_key='wrong', max_retries=0)
    with pytest.raises(openai.AuthenticationError): bad.completions.create(model=MODEL, prompt='x', max_tokens=2)
    r = httpx.post(env['url'] + '/v1/completions', json={'model': MODEL, 'prompt': 'x'})
    assert r.status_code == 401 and r.json()['error']['code'] == 'invalid_api_key'
    assert httpx.get(env['url'] + '/v1/models').status_code == 401

def test_prefix_cache_hit_skips_prefill(env):
    "A shared system prompt is cached at its boundary; the second request reports cached tokens, same output."
    sysmsg = {'role': 'system', 'content': 'You are a meticulous assistant. ' * 8}
    outs = []
    for q in ('What is 2+2?', 'Name a river.'):
        msgs = [sysmsg, {'role': 'user', 'content': q}]
        r = env['client'].chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
        im_end = env['tok'].convert_tokens_to_ids('<|im_end|>')
        assert r.choices[0].message.content == env['tok'].decode(ref_ids(env, chat_ids(env, msgs), 8, [im_end]), skip_special_tokens=True)
        outs.append(r.usage.prompt_tokens_details.cached_tokens)
    n_sys = len(env['tok'].apply_chat_template([sysmsg], tokenize=True, return_dict=False))
    assert outs == [0, n_sys]
    m = httpx.get(env['url'] + '/metrics').text
    hits = [l for l in m.splitlines() if l.startswith('hybridslm_prefix_cache_hits_total')]
    assert hits and float(hits[0].split()[-1]) >= 1

def test_disconnect_mid_stream_frees_slot(env):
    url = env['url']
    before = env['srv'].health()['aborted']
    body = {'model': MODEL, 'prompt': 'Tell me everything.', 'max_tokens': 200, 'temperature': 0, 'stream': True,
            'ignore_eos': True}
    with httpx.Client(timeout=30) as c:
        with c.stream('POST', url + '/v1/completions', json=body, headers={'Authorization': f'Bearer {API_KEY}'}) as r:
            assert r.status_code == 200
            it = r.iter_lines()
            got = [next(it) for _ in range(3)]
            assert any(l.startswith('data: ') for l in got)
            assert env['srv'].health()['running'] >= 1
    t0 = time.time()
    while time.time() - t0 < 10:
        h = env['srv'].health()
        if h['running'] == 0 and h['aborted'] > before: break
        time.sleep(0.1)
    assert h['running'] == 0 and h['aborted'] == before + 1, h
    m = httpx.get(url + '/metrics').text
    assert 'hybridslm_requests_in_flight 0.0' in m

def test_metrics_exposition(env):
    env['client'].completions.create(model=MODEL, prompt='metrics', max_tokens=4, temperature=0)
    with pytest.raises(openai.BadRequestError): env['client'].completions.create(model=MODEL, prompt='x', max_tokens=-1)
    m = httpx.get(env['url'] + '/metrics').text
    for name in ('hybridslm_request_latency_seconds_bucket', 'hybridslm_time_to_first_token_seconds_count',
                 'hybridslm_generation_tokens_per_second', 'hybridslm_requests_in_flight', 'hybridslm_queue_depth',
                 'hybridslm_errors_total', 'hybridslm_prefix_cache_hit_rate', 'hybridslm_generated_tokens_total'):
        assert name in m, name
    count = [l for l in m.splitlines() if l.startswith('hybridslm_time_to_first_token_seconds_count{endpoint="/v1/completions"}')]
    assert float(count[0].split()[-1]) >= 1

def test_grafana_dashboard_uses_exported_metrics(env):
    "Every series the dashboard queries is one the server exports (GPU series only exist on CUDA hosts)."
    import re
    from tests.serve_helpers import ROOT
    dash = json.loads((ROOT / 'deploy/grafana_dashboard.json').read_text())
    exprs = [t['expr'] for p in dash['panels'] for t in p['targets']]
    names = {n for e in exprs for n in re.findall(r'\b(hybridslm_[a-z_]+)', e)}
    m = httpx.get(env['url'] + '/metrics').text
    exported = {l.split('{')[0].split(' ')[0] for l in m.splitlines() if l and not l.startswith('#')}
    exported |= {n[:-len('_bucket')] for n in exported if n.endswith('_bucket')}
    missing = {n for n in names - exported if 'gpu' not in n and n != 'hybridslm_errors_total'}
    assert not missing, missing
    assert len(names) >= 12
