"""Hostile requests against the server (real uvicorn on a loopback port, in a thread): each one is answered with
the expected 4xx and an OpenAI-style error body naming the offending field; none gets a 5xx, none is silently
accepted, and the server answers correctly afterwards."""
import json, socket
import httpx, pytest
from tests.serve_helpers import API_KEY, MODEL, ThreadServer, make_checkpoint

LIMIT = 65536

@pytest.fixture(scope='module')
def srv(tmp_path_factory):
    s = ThreadServer(make_checkpoint(tmp_path_factory.mktemp('serve_hostile') / 'ckpt', max_seq_len=256),
                     max_body_bytes=LIMIT, max_batch=4)
    s.client = httpx.Client(timeout=30)             # one client: no per-request setup cost
    yield s
    s.client.close(); s.stop()

H = {'Authorization': f'Bearer {API_KEY}', 'Content-Type': 'application/json'}
C, CH = '/v1/completions', '/v1/chat/completions'
c = {'model': MODEL, 'prompt': 'hello', 'max_tokens': 4}
ch = {'model': MODEL, 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 4}
msg = lambda **kw: {**ch, 'messages': [{'role': 'user', 'content': 'hi', **kw}]}
nest = lambda d: b'{"model": "tiny", "prompt": "x", "logit_bias": ' + b'[' * d + b']' * d + b'}'

CASES = [  # (id, method, path, body: dict | bytes | None, extra headers, status, param the error must name)
    # malformed JSON
    ('truncated json', 'POST', C, b'{"model": "tiny", "prompt": ', {}, 400, None),
    ('json trailing garbage', 'POST', C, b'{"model": "tiny", "prompt": "x"} }', {}, 400, None),
    ('json single quotes', 'POST', C, b"{'model': 'tiny'}", {}, 400, None),
    ('json NaN literal', 'POST', C, b'{"model": "tiny", "prompt": "x", "temperature": NaN}', {}, 400, None),
    ('json Infinity literal', 'POST', C, b'{"model": "tiny", "prompt": "x", "max_tokens": Infinity}', {}, 400, None),
    ('json top-level string', 'POST', C, b'"hello"', {}, 400, None),
    ('json top-level null', 'POST', CH, b'null', {}, 400, None),
    ('utf-8 bom', 'POST', C, b'\xef\xbb\xbf' + json.dumps(c).encode(), {}, 400, None),
    ('invalid utf-8 bytes', 'POST', CH, b'{"model": "tiny", "messages": "\xc3\x28"}', {}, 400, None),
    # nesting and huge numbers
    ('nested 100k deep', 'POST', C, nest(30000), {}, 400, None),
    ('nested 500 deep', 'POST', C, nest(500), {}, 400, None),
    ('nested 40 deep', 'POST', C, nest(40), {}, 400, 'logit_bias'),
    ('integer of 5000 digits', 'POST', C, b'{"model": "tiny", "prompt": "x", "max_tokens": ' + b'9' * 5000 + b'}', {}, 400, None),
    ('integer of 100 digits', 'POST', C, b'{"model": "tiny", "prompt": "x", "max_tokens": ' + b'9' * 100 + b'}', {}, 400, 'max_tokens'),
    ('seed 2**63', 'POST', C, {**c, 'seed': 2**63}, {}, 400, 'seed'),
    ('seed 2**64', 'POST', CH, {**ch, 'seed': 2**64}, {}, 400, 'seed'),
    ('float overflow 1e999', 'POST', C, b'{"model": "tiny", "prompt": "x", "top_p": 1e999}', {}, 400, 'top_p'),
    ('token id 2**70', 'POST', C, {**c, 'prompt': [1, 2**70]}, {}, 400, 'prompt.1'),
    # wrong types (strict)
    ('max_tokens string', 'POST', C, {**c, 'max_tokens': '10'}, {}, 400, 'max_tokens'),
    ('max_tokens fractional', 'POST', C, {**c, 'max_tokens': 10.5}, {}, 400, 'max_tokens'),
    ('max_tokens bool', 'POST', CH, {**ch, 'max_tokens': True}, {}, 400, 'max_tokens'),
    ('stream string', 'POST', C, {**c, 'stream': 'yes'}, {}, 400, 'stream'),
    ('stream int', 'POST', CH, {**ch, 'stream': 1}, {}, 400, 'stream'),
    ('n string', 'POST', C, {**c, 'n': '2'}, {}, 400, 'n'),
    ('temperature string', 'POST', C, {**c, 'temperature': '0.5'}, {}, 400, 'temperature'),
    ('ignore_eos string', 'POST', C, {**c, 'ignore_eos': 'false'}, {}, 400, 'ignore_eos'),
    ('model not a string', 'POST', C, {**c, 'model': 7}, {}, 400, 'model'),
    ('prompt of bools', 'POST', C, {**c, 'prompt': [True, False]}, {}, 400, 'prompt'),
    ('prompt of floats', 'POST', C, {**c, 'prompt': [1.5]}, {}, 400, 'prompt'),
    ('messages not a list', 'POST', CH, {**ch, 'messages': 'hi'}, {}, 400, 'messages'),
    ('message null', 'POST', CH, {**ch, 'messages': [None]}, {}, 400, 'messages.0'),
    ('message content number', 'POST', CH, msg(content=5), {}, 400, 'messages.0.content'),
    ('message unknown key', 'POST', CH, msg(tool_calls=[]), {}, 400, 'messages.0.tool_calls'),
    ('text part not text', 'POST', CH, msg(content=[{'type': 'text', 'text': 5}]), {}, 400, 'messages'),
    ('role tool', 'POST', CH, msg(role='tool'), {}, 400, 'messages.0.role'),
    ('stream_options bad type', 'POST', C, {**c, 'stream': True, 'stream_options': {'include_usage': 'yes'}}, {}, 400, 'stream_options.include_usage'),
    ('stream_options unknown key', 'POST', C, {**c, 'stream': True, 'stream_options': {'x': 1}}, {}, 400, 'stream_options.x'),
    ('stream_options without stream', 'POST', C, {**c, 'stream_options': {'include_usage': True}}, {}, 400, 'stream_options'),
    # out-of-range values
    ('temperature 1e10', 'POST', C, {**c, 'temperature': 1e10}, {}, 400, 'temperature'),
    ('top_p 1.5', 'POST', CH, {**ch, 'top_p': 1.5}, {}, 400, 'top_p'),
    ('top_k negative', 'POST', C, {**c, 'top_k': -3}, {}, 400, 'top_k'),
    ('n too big', 'POST', C, {**c, 'n': 9}, {}, 400, 'n'),
    ('n negative', 'POST', CH, {**ch, 'n': -1}, {}, 400, 'n'),
    ('prompts x n too many', 'POST', C, {**c, 'prompt': ['a'] * 40, 'n': 2}, {}, 400, 'prompt'),
    ('prompt list huge', 'POST', C, {**c, 'prompt': ['a'] * 5000}, {}, 400, 'prompt'),
    ('max_completion_tokens zero', 'POST', CH, {**ch, 'max_completion_tokens': 0}, {}, 400, 'max_completion_tokens'),
    ('max_tokens past context', 'POST', CH, {**ch, 'max_tokens': 100000}, {}, 400, 'max_tokens'),
    ('stop list too long', 'POST', C, {**c, 'stop': [str(i) for i in range(17)]}, {}, 400, 'stop'),
    ('stop string too long', 'POST', C, {**c, 'stop': 'x' * 5000}, {}, 400, 'stop'),
    ('stop of numbers', 'POST', C, {**c, 'stop': [1, 2]}, {}, 400, 'stop'),
    ('logprobs with stream', 'POST', C, {**c, 'logprobs': 5, 'stream': True}, {}, 400, 'logprobs'),
    ('logprobs out of range', 'POST', C, {**c, 'logprobs': 10**6}, {}, 400, 'logprobs'),
    ('top_logprobs set', 'POST', CH, {**ch, 'logprobs': True, 'top_logprobs': 30}, {}, 400, 'logprobs'),
    ('json_object format', 'POST', CH, {**ch, 'response_format': {'type': 'json_object'}}, {}, 400, 'response_format'),
    ('best_of 0', 'POST', C, {**c, 'best_of': 0}, {}, 400, 'best_of'),
    ('logit_bias set', 'POST', C, {**c, 'logit_bias': {'50256': -100}}, {}, 400, 'logit_bias'),
    ('penalty set', 'POST', CH, {**ch, 'presence_penalty': 1.5}, {}, 400, 'presence_penalty'),
    # bad unicode
    ('lone surrogate prompt', 'POST', C, b'{"model": "tiny", "prompt": "\\ud800 x", "max_tokens": 2}', {}, 400, 'prompt'),
    ('lone surrogate content', 'POST', CH, b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\udfffb"}]}', {}, 400, 'messages.0.content'),
    ('lone surrogate model', 'POST', C, b'{"model": "\\udc80", "prompt": "x"}', {}, 400, 'model'),
    ('lone surrogate key', 'POST', C, b'{"model": "tiny", "prompt": "x", "\\ud83d": 1}', {}, 400, None),
    ('lone surrogate stop', 'POST', C, b'{"model": "tiny", "prompt": "x", "stop": ["\\ud800"]}', {}, 400, 'stop.0'),
    # sizes
    ('huge body', 'POST', C, {**c, 'prompt': 'x' * (LIMIT + 10)}, {}, 413, None),
    ('prompt past context', 'POST', C, {**c, 'prompt': 'word ' * 2000}, {}, 400, 'prompt'),
    ('chat past context', 'POST', CH, msg(content='word ' * 2000), {}, 400, 'messages'),
    ('1500 messages past context', 'POST', CH, {**ch, 'messages': [{'role': 'user', 'content': 'a'}] * 1500}, {}, 400, 'messages'),
    ('unknown model long name', 'POST', C, {**c, 'model': 'm' * 20000}, {}, 404, 'model'),
    # methods, routes, auth
    ('GET on completions', 'GET', C, None, {}, 405, None),
    ('PUT on chat', 'PUT', CH, ch, {}, 405, None),
    ('DELETE on health', 'DELETE', '/health', None, {}, 405, None),
    ('POST on models', 'POST', '/v1/models', b'{}', {}, 405, None),
    ('unknown route', 'POST', '/v1/embeddings', c, {}, 404, None),
    ('unknown deep route', 'GET', '/v1/' + 'a/' * 50, None, {}, 404, None),
    ('docs route', 'GET', '/docs', None, {}, 404, None),
    ('no key', 'POST', C, c, {'Authorization': ''}, 401, None),
    ('wrong key', 'POST', CH, ch, {'Authorization': f'Bearer {API_KEY}x'}, 401, None),
    ('basic auth', 'GET', '/v1/models', None, {'Authorization': 'Basic c2stdGVzdC1rZXk6'}, 401, None),
    ('key as query', 'GET', f'/v1/models?api_key={API_KEY}', None, {'Authorization': ''}, 401, None),
    ('non-ascii key', 'POST', C, c, {'Authorization': 'Bearer sk-\xe9\xe9'}, 401, None),
]

def send(srv, method, path, body, headers):
    raw = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    hs = {k: v for k, v in {**H, **headers}.items() if v}
    hs = {k: v.encode('latin-1') if isinstance(v, str) else v for k, v in hs.items()}
    return srv.client.request(method, srv.url + path, content=raw, headers=hs)

@pytest.mark.parametrize('name,method,path,body,headers,status,param', CASES, ids=[x[0] for x in CASES])
def test_hostile(srv, name, method, path, body, headers, status, param):
    r = send(srv, method, path, body, headers)
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers['content-type'].startswith('application/json')
    err = r.json()['error']
    assert sorted(err) == ['code', 'message', 'param', 'type'], err
    assert isinstance(err['message'], str) and 0 < len(err['message']) < 1000 and err['type'], err
    if param is not None: assert err['param'] == param, err
    if name.startswith('lone surrogate'): assert 'surrogate' in err['message'] and 'TextEncodeInput' not in err['message']

def test_case_count():
    assert len({x[0] for x in CASES}) == len(CASES) >= 40

def raw_http(port, data: bytes) -> bytes:
    with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
        s.sendall(data)
        out = b''
        while chunk := s.recv(65536): out += chunk
    return out

@pytest.mark.parametrize('name,data', [
    ('garbage request line', b'HELLO\r\n\r\n'),
    ('bad content-length', b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n'),
    ('smuggling: length and chunked', b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n'
                                      b'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n'),
    ('header too large', b'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 20000),
], ids=lambda x: x if isinstance(x, str) else None)
def test_malformed_http(srv, name, data):
    "Protocol-level garbage: uvicorn's plain-text 400 becomes an OpenAI-style one, and the connection is closed."
    out = raw_http(srv.port, data)
    head, _, body = out.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 4'), out[:200]
    assert sorted(json.loads(body)['error']) == ['code', 'message', 'param', 'type']

def test_keep_alive_survives_bad_json(srv):
    "Requests that used to raise inside the app (deep nesting, a 5000-digit number) are 400s on a connection that stays open."
    import http.client
    conn = http.client.HTTPConnection('127.0.0.1', srv.port, timeout=30)
    conn.connect(); sock = conn.sock
    for body in (nest(30000), b'{"model": "tiny", "prompt": "x", "max_tokens": ' + b'9' * 5000 + b'}', json.dumps({**c, 'temperature': 0}).encode()):
        conn.request('POST', C, body=body, headers=H)
        r = conn.getresponse(); data = json.loads(r.read())
        assert conn.sock is sock and r.getheader('connection') != 'close'
    assert r.status == 200 and data['choices'][0]['finish_reason'] in ('stop', 'length')
    conn.close()

def test_no_5xx_and_bounded_metric_labels(srv):
    for i in range(20): send(srv, 'GET', f'/random-{i}', None, {})
    r = httpx.post(srv.url + C, headers=H, json={**c, 'temperature': 1e-40, 'seed': 2**63 - 1})
    assert r.status_code == 200, r.text                   # tiny temperature: greedy, no nan
    r2 = httpx.post(srv.url + C, headers=H, json={**c, 'temperature': 0})
    assert r.json()['choices'][0]['text'] == r2.json()['choices'][0]['text']
    m = httpx.get(srv.url + '/metrics').text
    assert 'status="5' not in m and 'internal_error' not in m
    assert 'random-' not in m and 'endpoint="other"' in m
