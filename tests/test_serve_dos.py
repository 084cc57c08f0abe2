"""One request must not starve the others: a chat of ~300 short messages (hundreds of message boundaries, a few
thousand prompt tokens) is prefilled in bounded chunks between other requests' decode steps, stores a bounded
number of prefix snapshots, and still gets the exact greedy answer."""
import threading, time
import httpx, pytest, torch
from tests.serve_helpers import API_KEY, MODEL, ThreadServer, make_checkpoint

H = {'Authorization': f'Bearer {API_KEY}'}
LONG = [{'role': 'user' if i % 2 == 0 else 'assistant', 'content': f'message {i}: the quick brown fox jumps'}
        for i in range(300)]

@pytest.fixture(scope='module')
def srv(tmp_path_factory):
    s = ThreadServer(make_checkpoint(tmp_path_factory.mktemp('serve_dos') / 'ckpt', max_seq_len=8192),
                     max_batch=8, prefix_block=256, prefill_chunk=128)
    yield s
    s.stop()

def post(srv, path, body, out, key):
    t0 = time.perf_counter()
    r = httpx.post(srv.url + path, json=body, headers=H, timeout=300)
    out[key] = (r, time.perf_counter() - t0, time.perf_counter())

def test_long_chat_does_not_starve_short_request(srv):
    out = {}
    long_body = {'model': MODEL, 'messages': LONG, 'max_tokens': 4, 'temperature': 0}
    tl = threading.Thread(target=post, args=(srv, '/v1/chat/completions', long_body, out, 'long')); tl.start()
    eng = srv.app.state.engine
    t0 = time.time()
    while not getattr(eng, 'prefilling', None) and time.time() - t0 < 1: time.sleep(0.005)   # the long prefill has begun
    post(srv, '/v1/completions', {'model': MODEL, 'prompt': 'Hello there', 'max_tokens': 4, 'temperature': 0}, out, 'short')
    tl.join(300)
    (rs, dt_short, end_short), (rl, dt_long, end_long) = out['short'], out['long']
    assert rs.status_code == 200 and rl.status_code == 200, (rs.text, rl.text)
    print(f'short request {dt_short:.2f} s, long chat {dt_long:.2f} s')
    assert end_short < end_long, (dt_short, dt_long)           # the short one did not wait for the long prefill
    assert dt_short < 0.6 * dt_long, (dt_short, dt_long)
    # the long one is still right: same text as model.generate on the same prompt, alone
    from hybridslm.serve.server import ChatMessage, chat_prompt
    ids, _ = chat_prompt(eng.tok, [ChatMessage(**m) for m in LONG])
    assert rl.json()['usage']['prompt_tokens'] == len(ids) > 2500
    im_end = eng.tok.convert_tokens_to_ids('<|im_end|>')
    with torch.no_grad():
        ref = eng.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, eos_token_id=[eng.tok.eos_token_id, im_end],
                                 pad_token_id=eng.tok.pad_token_id)[0, len(ids):].tolist()
    ref = ref[:next((i for i, t in enumerate(ref) if t in (eng.tok.eos_token_id, im_end)), len(ref))]
    assert rl.json()['choices'][0]['message']['content'] == eng.tok.decode(ref, skip_special_tokens=True)
    assert eng.prefix_cache.stores <= eng.prefix_cache.max_points

def test_repeat_of_long_chat_hits_prefix_cache(srv):
    "The next turn of the long chat reuses a snapshot near its end (one of the few kept)."
    body = {'model': MODEL, 'messages': LONG + [{'role': 'assistant', 'content': 'ok'}, {'role': 'user', 'content': 'and?'}],
            'max_tokens': 2, 'temperature': 0}
    r = httpx.post(srv.url + '/v1/chat/completions', json=body, headers=H, timeout=300)
    assert r.status_code == 200
    u = r.json()['usage']
    assert u['prompt_tokens_details']['cached_tokens'] > 0.9 * u['prompt_tokens'], u
