"Shared by tests/test_serve_*.py: a tiny random checkpoint and a real `hybridslm serve` subprocess on a free loopback port."
import os, socket, subprocess, sys, time
from pathlib import Path
import httpx, torch

ROOT = Path(__file__).resolve().parent.parent
API_KEY = 'sk-test-key'
MODEL = 'tiny'

def make_checkpoint(path: Path, max_seq_len: int = 256, seed: int = 0) -> Path:
    "Random tiny hybrid model + the embedded tokenizer, written with save_pretrained."
    from hybridslm.model.config import HybridConfig
    from hybridslm.model import HybridForCausalLM
    from hybridslm.data.tokenizer import load_tokenizer
    tok = load_tokenizer()
    torch.manual_seed(seed)
    cfg = HybridConfig(vocab_size=len(tok), d_model=64, layer_pattern='MAMA', n_heads=4, n_kv_heads=2, d_state=16,
                       headdim=16, chunk_size=16, max_seq_len=max_seq_len, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    HybridForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class Server:
    "`hybridslm serve` in a subprocess; `.url`, `.stop()`."
    def __init__(self, ckpt: Path, *extra, timeout: float = 90):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        cmd = [sys.executable, '-c', 'import sys; from hybridslm.cli import main; sys.exit(main())', 'serve',
               '--model', str(ckpt), '--port', str(self.port), '--served-model-name', MODEL, '--api-key', API_KEY,
               '--torch-threads', '1', '--log-level', 'warning', *extra]
        self.log = open(ckpt.parent / f'server-{self.port}.log', 'w+')
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"server exited:\n{self.logs()}")
            try:
                if httpx.get(self.url + '/health', timeout=1).status_code == 200: return
            except httpx.HTTPError: pass
            time.sleep(0.25)
        self.stop(); raise RuntimeError(f"server did not become healthy in {timeout} s:\n{self.logs()}")

    def logs(self) -> str: self.log.flush(); self.log.seek(0); return self.log.read()
    def stop(self):
        self.proc.terminate()
        try: self.proc.wait(15)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()

class ThreadServer:
    "The same app under a real uvicorn server in a thread of this process (cheaper than a subprocess: no second torch import)."
    ENGINE = ('max_batch', 'prefix_block', 'prefix_cache_mb', 'prefill_chunk', 'max_context')
    HTTP = ('header_timeout', 'body_timeout', 'timeout_keep_alive', 'timeout_graceful_shutdown', 'limit_concurrency')
    def __init__(self, ckpt: Path, timeout: float = 30, **app_kw):
        import threading, uvicorn
        from hybridslm.serve.server import create_app, load_engine, uvicorn_config
        eng_kw = {k: app_kw.pop(k) for k in self.ENGINE if k in app_kw}
        http_kw = {k: app_kw.pop(k) for k in self.HTTP if k in app_kw}
        app_kw.setdefault('api_keys', [API_KEY])
        if 'body_timeout' in http_kw: app_kw['body_timeout'] = http_kw['body_timeout']
        self.app = create_app(load_engine(ckpt, device='cpu', **eng_kw), model_name=MODEL, **app_kw)
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.server = uvicorn.Server(uvicorn_config(self.app, host='127.0.0.1', port=self.port, log_level='warning', **http_kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > timeout or not self.thread.is_alive(): raise RuntimeError('uvicorn thread did not start')
            time.sleep(0.05)

    def health(self) -> dict:
        "The detailed /health (it needs the key)."
        return httpx.get(self.url + '/health', headers={'Authorization': f'Bearer {API_KEY}'}).json()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
