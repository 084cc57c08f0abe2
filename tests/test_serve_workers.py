"`hybridslm serve --workers 2`: two uvicorn worker processes, each with its own engine, behind one port."
from concurrent.futures import ThreadPoolExecutor
import httpx, openai
from tests.serve_helpers import API_KEY, MODEL, Server, make_checkpoint

def test_two_workers(tmp_path):
    srv = Server(make_checkpoint(tmp_path / 'ckpt'), '--workers', '2', timeout=120)
    try:
        c = openai.OpenAI(base_url=srv.url + '/v1', api_key=API_KEY, max_retries=0, timeout=60)
        with ThreadPoolExecutor(6) as ex:
            outs = list(ex.map(lambda i: c.completions.create(model=MODEL, prompt='Same prompt', max_tokens=6,
                                                               temperature=0).choices[0].text, range(6)))
        assert len(set(outs)) == 1                      # same weights in both workers: same greedy output
        import subprocess
        kids = subprocess.run(['pgrep', '-P', str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(kids) >= 2, kids                     # uvicorn's supervisor forked the workers
        assert httpx.get(srv.url + '/health').json()['status'] == 'ok'
    finally:
        srv.stop()
