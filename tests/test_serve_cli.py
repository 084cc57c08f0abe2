"""`hybridslm serve` as a real subprocess (the console-script path): one worker always; `--workers 2` when
HYBRIDSLM_SLOW_TESTS=1 (three more processes import torch: ~40-70 s on a 2-core box)."""
import os, subprocess
from concurrent.futures import ThreadPoolExecutor
import httpx, openai, pytest
from tests.serve_helpers import API_KEY, MODEL, Server, make_checkpoint

def test_cli_serve_subprocess(tmp_path):
    srv = Server(make_checkpoint(tmp_path / 'ckpt'))
    try:
        c = openai.OpenAI(base_url=srv.url + '/v1', api_key=API_KEY, max_retries=0, timeout=60)
        r = c.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': 'hi'}], max_tokens=5, temperature=0)
        assert r.choices[0].finish_reason in ('stop', 'length') and r.usage.prompt_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + '/v1', api_key='nope', max_retries=0).models.list()
        assert 'hybridslm_requests_total' in httpx.get(srv.url + '/metrics').text
    finally:
        srv.stop()
    assert srv.proc.returncode is not None

@pytest.mark.skipif(not os.environ.get('HYBRIDSLM_SLOW_TESTS'), reason='slow: set HYBRIDSLM_SLOW_TESTS=1')
def test_cli_two_workers(tmp_path):
    srv = Server(make_checkpoint(tmp_path / 'ckpt'), '--workers', '2', timeout=180)
    try:
        c = openai.OpenAI(base_url=srv.url + '/v1', api_key=API_KEY, max_retries=0, timeout=60)
        with ThreadPoolExecutor(6) as ex:
            outs = list(ex.map(lambda i: c.completions.create(model=MODEL, prompt='Same prompt', max_tokens=6,
                                                               temperature=0).choices[0].text, range(6)))
        assert len(set(outs)) == 1                      # same weights in both workers: same greedy output
        kids = subprocess.run(['pgrep', '-P', str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(kids) >= 2, kids                     # uvicorn's supervisor forked the workers
        assert httpx.get(srv.url + '/health').json()['status'] == 'ok'
    finally:
        srv.stop()
