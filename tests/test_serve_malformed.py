"""Malformed and hostile requests against the server (real uvicorn on a loopback port, in a thread): every one gets a
4xx with a message, never a 5xx, and the server keeps answering correctly afterwards."""
import json, socket
import httpx, pytest
from tests.serve_helpers import API_KEY, MODEL, ThreadServer, make_checkpoint

LIMIT = 65536

@pytest.fixture(scope='module')
def srv(tmp_path_factory):
    s = ThreadServer(make_checkpoint(tmp_path_factory.mktemp('serve_bad') / 'ckpt', max_seq_len=256),
                     max_body_bytes=LIMIT, max_batch=4)
    yield s
    s.stop()

H = {'Authorization': f'Bearer {API_KEY}', 'Content-Type': 'application/json'}
C, CH = '/v1/completions', '/v1/chat/completions'
ok_c = {'model': MODEL, 'prompt': 'hello', 'max_tokens': 4}
ok_ch = {'model': MODEL, 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 4}

CASES = [  # (name, path, raw body bytes, expected status, substring of the message)
    ('malformed json', C, b'{"model": "tiny", "prompt": ', 400, 'malformed JSON'),
    ('trailing garbage', C, b'{"model": "tiny", "prompt": "x"} xyz', 400, 'malformed JSON'),
    ('empty body', C, b'', 400, 'malformed JSON'),
    ('json array', C, b'[1, 2]', 400, 'JSON object'),
    ('invalid utf-8', C, b'{"model": "tiny", "prompt": "\xff\xfe\xc3("}', 400, 'UTF-8'),
    ('unknown field', C, {**ok_c, 'max_tokns': 5}, 400, "unknown field 'max_tokns'"),
    ('unknown chat field', CH, {**ok_ch, 'foo': 1}, 400, "unknown field 'foo'"),
    ('missing prompt', C, {'model': MODEL}, 400, 'prompt'),
    ('missing model', C, {'prompt': 'x'}, 400, 'model'),
    ('unknown model', C, {**ok_c, 'model': 'gpt-9'}, 404, 'does not exist'),
    ('negative max_tokens', C, {**ok_c, 'max_tokens': -5}, 400, 'max_tokens must be >= 1'),
    ('zero max_tokens', CH, {**ok_ch, 'max_tokens': 0}, 400, 'max_tokens must be >= 1'),
    ('huge max_tokens', C, {**ok_c, 'max_tokens': 10**12}, 400, 'maximum context length'),
    ('max_tokens as string', C, {**ok_c, 'max_tokens': 'many'}, 400, 'max_tokens'),
    ('prompt longer than context', C, {**ok_c, 'prompt': 'word ' * 2000}, 400, 'maximum context length'),
    ('chat longer than context', CH, {**ok_ch, 'messages': [{'role': 'user', 'content': 'word ' * 2000}]}, 400, 'maximum context length'),
    ('token id out of vocab', C, {**ok_c, 'prompt': [1, 2, 10**9]}, 400, 'token ids'),
    ('negative token id', C, {**ok_c, 'prompt': [-1]}, 400, 'token ids'),
    ('empty prompt list', C, {**ok_c, 'prompt': []}, 400, 'prompt'),
    ('prompt wrong type', C, {**ok_c, 'prompt': {'a': 1}}, 400, 'prompt'),
    ('temperature negative', C, {**ok_c, 'temperature': -1}, 400, 'temperature'),
    ('top_p zero', C, {**ok_c, 'top_p': 0}, 400, 'top_p'),
    ('n zero', C, {**ok_c, 'n': 0}, 400, 'n must be'),
    ('too many stops', C, {**ok_c, 'stop': ['a'] * 40}, 400, 'stop'),
    ('empty stop string', C, {**ok_c, 'stop': ['']}, 400, 'stop'),
    ('logprobs when streaming', C, {**ok_c, 'logprobs': 3, 'stream': True}, 400, "'logprobs' is supported with stream=false only"),
    ('logprobs beyond 20', C, {**ok_c, 'logprobs': 21}, 400, 'logprobs must be in [0, 20]'),
    ('unsupported tools', CH, {**ok_ch, 'tools': [{'type': 'function'}]}, 400, "'tools' is not supported"),
    ('empty messages', CH, {**ok_ch, 'messages': []}, 400, 'at least one message'),
    ('bad role', CH, {**ok_ch, 'messages': [{'role': 'wizard', 'content': 'x'}]}, 400, 'role'),
    ('image content part', CH, {**ok_ch, 'messages': [{'role': 'user', 'content': [{'type': 'image_url'}]}]}, 400, 'text content'),
    ('lone surrogate', C, b'{"model": "tiny", "prompt": "\\ud800 x", "max_tokens": 2}', 400, 'lone UTF-16 surrogate'),
    ('oversized body', C, {**ok_c, 'prompt': 'x' * (LIMIT + 10)}, 413, 'exceeds the limit'),
]

@pytest.mark.parametrize('name,path,body,status,msg', CASES, ids=[c[0] for c in CASES])
def test_malformed(srv, name, path, body, status, msg):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(srv.url + path, content=raw, headers=H, timeout=30)
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()['error']
    assert msg is None or msg in err['message'], err
    assert err['type']

def test_no_5xx_from_odd_requests_and_still_healthy(srv):
    u = srv.url
    odd = [httpx.get(u + C, headers=H), httpx.post(u + '/v1/nope', headers=H, content=b'{}'),
           httpx.post(u + C, headers={**H, 'Content-Type': 'text/plain'}, content=b'not json'),
           httpx.post(u + C, headers={'Authorization': 'Basic abc'}, content=b'{}'),
           httpx.post(u + C, headers={'Authorization': f'Bearer {API_KEY}x'}, json=ok_c)]
    assert [r.status_code for r in odd] == [405, 404, 400, 401, 401]
    # a lying Content-Length larger than the limit is refused before reading
    with socket.create_connection(('127.0.0.1', srv.port)) as s:
        s.sendall(f'POST {C} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {10**9}\r\n\r\n'.encode())
        assert b' 413 ' in s.recv(4096).split(b'\r\n')[0] + b' '
    r = httpx.post(u + C, headers=H, json={**ok_c, 'temperature': 0})
    assert r.status_code == 200 and r.json()['choices'][0]['finish_reason'] in ('stop', 'length')
    m = httpx.get(u + '/metrics').text
    assert 'status="5' not in m and 'internal_error' not in m
