"""A model converted from a released hybrid checkpoint goes through the rest of the project unchanged.

A tiny random Bamba checkpoint (transformers' `BambaForCausalLM`, saved with a tokenizer as a released checkpoint is) is
converted once with the real `hybridslm convert` CLI. The converted folder, loaded the normal way, then goes through
LoRA, int8/int4 quantization, ONNX export, `hybridslm serve` and the lm-eval adapter; each result is checked against
an independent computation (the float model, torch, `model.generate`, or the Bamba model's own logits). The last test
runs the three commands a user types to get from a released checkpoint to a LoRA fine-tune and a served endpoint."""
import json, os, shlex, subprocess, sys, time
from pathlib import Path
import httpx, numpy as np, pytest, torch
from transformers import AutoModelForCausalLM, BambaConfig, BambaForCausalLM
from hybridslm.data.tokenizer import load_tokenizer
from hybridslm.model import HybridForCausalLM
from tests.serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent                       # console scripts of this environment (hybridslm, papermill)
torch.set_num_threads(1)

def cli(name: str) -> str:
    "The console script `name` of this environment (as a user has it on PATH after `pip install`)."
    exe = BIN / name
    if not exe.exists(): pytest.skip(f"console script {name!r} not installed next to {sys.executable}")
    return str(exe)

def sh(cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run one shell command line from the repository root; the command as written is what a user types."
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    env['PATH'] = str(BIN) + os.pathsep + env.get('PATH', '')
    return subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

@pytest.fixture(scope='module')
def conv(tmp_path_factory):
    "A released-style Bamba checkpoint (weights + tokenizer) and its conversion by `hybridslm convert SRC DST`."
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = BambaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head='auto',
                      mamba_d_state=16, mamba_chunk_size=8, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ref = BambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters(): p.add_(torch.randn_like(p) * 0.05)
    root = tmp_path_factory.mktemp('conv')
    src, dst = root / 'bamba', root / 'converted'
    ref.save_pretrained(src); tok.save_pretrained(src)
    cmd = f"{cli('hybridslm')} convert {shlex.quote(str(src))} {shlex.quote(str(dst))}"
    t0 = time.time(); r = sh(cmd); secs = time.time() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nconvert: {secs:.1f} s")
    return dict(src=src, dst=dst, ref=ref, tok=load_tokenizer(str(dst)) if (dst / 'tokenizer.json').exists() else tok,
                root=root, cmd=cmd)

def load(conv) -> HybridForCausalLM:
    "The converted checkpoint through the normal loader (transformers' Auto class, as serve and eval load it)."
    m = AutoModelForCausalLM.from_pretrained(str(conv['dst'])).eval()
    assert type(m) is HybridForCausalLM and m.dtype == torch.float32
    return m

def batch(vocab: int, seed: int = 0):
    "Two rows of random ids, the second left-padded by 3."
    ids = torch.randint(3, vocab, (2, 13), generator=torch.Generator().manual_seed(seed))
    am = torch.ones_like(ids); am[1, :3] = 0
    return ids, am

def logits(model, ids, am=None):
    with torch.no_grad(): return model(input_ids=ids, attention_mask=am).logits.float()

def test_converted_equals_bamba_and_keeps_tokenizer(conv):
    "The loaded conversion computes what the Bamba model computes, and the checkpoint's tokenizer came along."
    m = load(conv)
    ids, am = batch(m.config.vocab_size)
    d = (logits(m, ids, am) - logits(conv['ref'], ids, am))[am.bool()].abs().max().item()
    assert d < 1e-4, d
    for f in ('tokenizer.json', 'tokenizer_config.json'):
        assert (conv['dst'] / f).read_bytes() == (conv['src'] / f).read_bytes(), f

def test_lora(conv, tmp_path):
    pytest.importorskip('peft')
    from hybridslm.post.lora import (apply_lora, verify_lora, train_lora, merge_lora, assistant_loss, load_instructions,
                                     tokenize_chat, pack_examples)
    m = load(conv)
    pm = apply_lora(m, r=8, alpha=16, dropout=0.0)
    pat = m.config.layer_pattern
    want = {'A': 4 * pat.count('A'), 'M': 2 * pat.count('M'), 'mlp': 3 * len(pat)}   # q/k/v/o, in/out, gate/up/down
    assert verify_lora(pm) == pm.lora_counts == want
    tok = conv['tok']
    convs = load_instructions(ROOT / 'data/instruct/alpaca_en_demo.jsonl', limit=6)
    ids, lab = pack_examples([tokenize_chat(tok, c, 64) for c in convs], 64, tok.pad_token_id)
    before = assistant_loss(pm, ids, lab)
    losses = train_lora(pm, ids, lab, steps=8, batch_size=len(ids), lr=1e-2, warmup=1, progress=False)
    after = assistant_loss(pm, ids, lab)
    print(f"\nLoRA on converted model: assistant loss {before:.4f} -> {after:.4f} (train steps {losses[0]:.4f} -> {losses[-1]:.4f})")
    assert after < before - 0.05, (before, after)
    x, am = batch(m.config.vocab_size, 1)
    la = logits(pm, x, am)
    base = logits(load(conv), x, am)
    merged = merge_lora(pm)
    assert type(merged) is HybridForCausalLM
    lm = logits(merged, x, am)
    d_merge, d_base = (lm - la).abs().max().item(), (la - base).abs().max().item()
    print(f"max |merged - adapter| = {d_merge:.2e}, max |adapter - base| = {d_base:.2e}")
    assert d_merge < 1e-4 and d_base > 1e-2
    # the merged model is a plain checkpoint again: saved and reloaded the normal way, it computes the same logits
    merged.save_pretrained(tmp_path / 'merged')
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged')).eval()
    assert type(back) is HybridForCausalLM and torch.equal(logits(back, x, am), lm)

def _agreement(q, f, am):
    "Top-1 agreement and relative L2 error of logits `q` vs `f` over real (unpadded) positions."
    q, f = q[am.bool()], f[am.bool()]
    return (q.argmax(-1) == f.argmax(-1)).float().mean().item(), ((q - f).norm() / f.norm()).item()

def dequantized_copy(conv, q) -> HybridForCausalLM:
    "The float model with every quantized projection replaced by its dequantized weights (plain torch Linear)."
    from hybridslm.post.quantize import Int4CPULinear, target_linears
    ref = load(conv)
    with torch.no_grad():
        for n, lin in target_linears(ref).items():
            qm = q.get_submodule(n)
            lin.weight.copy_(qm.dequantized_weight() if isinstance(qm, Int4CPULinear) else qm.weight.dequantize())
    return ref

# Measured on this model, 46 real positions: against the float model (top-1 agreement, relative L2 error of logits)
# int8 1.000 / 0.0145, int4 (group 32) 0.696 / 0.178 (random weights give flat logits, so top-1 flips easily);
# against the float model holding the dequantized weights: int8 5.9e-7, int4 5.2e-3 (torch's int4 CPU kernel
# multiplies in bfloat16). The bounds leave about 2x room on each error.
BOUNDS = {'int8': (0.95, 0.03, 1e-5), 'int4': (0.5, 0.35, 1.5e-2)}

@pytest.mark.parametrize('scheme', ['int8', 'int4'])
def test_quantize(conv, scheme, tmp_path):
    pytest.importorskip('torchao')
    from hybridslm.post.quantize import quantize_model, quantized_weights, save_quantized, load_quantized
    ids, am = batch(conv['ref'].config.vocab_size, 2)
    f = logits(load(conv), ids, am)
    q = quantize_model(load(conv), scheme)
    assert quantized_weights(q) and q.config.quantization['scheme'] == scheme
    lq = logits(q, ids, am)
    # the quantized kernels compute what float matmuls with the dequantized weights compute
    _, rel_dq = _agreement(lq, logits(dequantized_copy(conv, q), ids, am), am)
    top1, rel = _agreement(lq, f, am)
    print(f"\n{scheme}: vs float top-1 {top1:.3f}, rel L2 {rel:.4f}; vs dequantized-weight float model rel L2 {rel_dq:.2e}")
    assert rel_dq < BOUNDS[scheme][2], rel_dq
    assert top1 >= BOUNDS[scheme][0] and 0 < rel < BOUNDS[scheme][1], (top1, rel)
    out = save_quantized(q, tmp_path / scheme, tokenizer=conv['tok'])
    back = load_quantized(out)
    assert quantized_weights(back) and back.config.quantization['scheme'] == scheme
    assert torch.allclose(logits(back, ids, am), lq, atol=1e-5)

def test_onnx(conv, tmp_path):
    pytest.importorskip('onnxruntime')
    from hybridslm.post.onnx_export import export_onnx, OnnxHybridLM
    m = load(conv)
    export_onnx(m, tmp_path / 'onnx')
    olm = OnnxHybridLM(tmp_path / 'onnx', threads=1)
    rows = [torch.randint(3, m.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 11, 19)]
    L = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), r]) for r in rows])
    am = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)]) for r in rows])
    lg, states = olm.prefill(ids.numpy(), am.numpy())
    ref = logits(m, ids, am).numpy()
    d_pre = float(np.abs(lg - ref)[am.bool().numpy()].max())
    # one decode step for every row against the torch model on the unpadded row plus the new token
    nxt = lg[:, -1].argmax(-1)
    lg2, _ = olm.step(nxt, states, np.concatenate([am.numpy(), np.ones((3, 1), np.int64)], 1))
    d_dec = max(float(np.abs(lg2[b, 0] - logits(m, torch.cat([r, torch.tensor([int(nxt[b])])])[None])[0, -1].numpy()).max())
                for b, r in enumerate(rows))
    print(f"\nONNX vs torch on a left-padded batch: prefill {d_pre:.2e}, decode {d_dec:.2e}")
    assert d_pre < 1e-4 and d_dec < 1e-4, (d_pre, d_dec)

def greedy_text(model, tok, prompt: str, n: int) -> str:
    "`model.generate` alone, greedy, cut at EOS, decoded as the server decodes."
    ids = tok.encode(prompt)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    if tok.eos_token_id in out: out = out[:out.index(tok.eos_token_id)]
    return tok.decode(out, skip_special_tokens=True)

class Background:
    "One command line (a user's, as typed) running from the repository root, its output in a log file."
    def __init__(self, cmd: str, log: Path):
        env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
        env['PATH'] = str(BIN) + os.pathsep + env.get('PATH', '')
        self.cmd, self.t0, self.log = cmd, time.time(), open(log, 'w+')
        self.proc = subprocess.Popen(shlex.split(cmd), cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
    def logs(self) -> str: self.log.flush(); self.log.seek(0); return self.log.read()
    def wait(self, timeout: float) -> int:
        try: return self.proc.wait(timeout)
        except subprocess.TimeoutExpired: self.stop(); raise AssertionError(f"{self.cmd} ran past {timeout} s:\n{self.logs()[-3000:]}")
    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()

def start_server(model_dir: Path, log: Path):
    "`hybridslm serve --model DIR --port P` as a user types it (loopback, no key); returns it once /health answers."
    port = free_port()
    srv = Background(f"{cli('hybridslm')} serve --model {shlex.quote(str(model_dir))} --port {port}", log)
    srv.url = f'http://127.0.0.1:{port}'
    while True:
        assert srv.proc.poll() is None, f"server exited:\n{srv.logs()}"
        try:
            if httpx.get(srv.url + '/health', timeout=1).status_code == 200: break
        except httpx.HTTPError: pass
        if time.time() - srv.t0 > 120: srv.stop(); raise AssertionError(f"server not healthy after 120 s:\n{srv.logs()}")
        time.sleep(0.25)
    print(f"\nserve: healthy {time.time() - srv.t0:.1f} s after start")
    return srv

@pytest.fixture(scope='module')
def served(conv):
    "The converted checkpoint served."
    srv = start_server(conv['dst'], conv['root'] / 'serve.log')
    try: yield dict(url=srv.url, name=conv['dst'].name, cmd=srv.cmd)
    finally: srv.stop()

def test_serve(conv, served):
    "/v1/completions (greedy) from the served converted checkpoint equals the converted model's own `generate`."
    m, tok, url = load(conv), conv['tok'], served['url']
    for prompt in ('Once upon a time', 'The capital of France is'):
        r = httpx.post(url + '/v1/completions', timeout=60,
                       json=dict(model=served['name'], prompt=prompt, max_tokens=8, temperature=0))
        assert r.status_code == 200, r.text
        got, want = r.json()['choices'][0]['text'], greedy_text(m, tok, prompt, 8)
        assert got == want and got, (prompt, got, want)
        assert r.json()['usage']['prompt_tokens'] == len(tok.encode(prompt))
    metrics = httpx.get(url + '/metrics', timeout=10)
    assert metrics.status_code == 200
    done = [l for l in metrics.text.splitlines() if l.startswith('hybridslm_generated_tokens_total')]
    assert done and float(done[0].split()[-1]) >= 2, done

def test_eval_adapter(conv):
    "lm-eval's loglikelihood through the project's adapter equals log-probs from the Bamba model's own logits."
    pytest.importorskip('lm_eval')
    from lm_eval.api.instance import Instance
    from hybridslm.eval.lm_eval import HybridSLMEvalLM
    tok = conv['tok']
    q = 'Question: Which gas do plants take in from the air?\nAnswer:'
    pairs = [(q, ' carbon dioxide'), (q, ' oxygen'), (q, ' nitrogen'), ('The cat sat on the', ' mat'), ('1, 2, 3,', ' 4')]
    reqs = [Instance(request_type='loglikelihood', doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    got = HybridSLMEvalLM(model=load(conv), tokenizer=tok, batch_size=2).loglikelihood(reqs, disable_tqdm=True)
    wants = []
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        n_ctx, whole = len(tok.encode(ctx)), tok.encode(ctx + cont)
        assert whole[:n_ctx] == tok.encode(ctx)            # the context's tokens are a prefix of the whole text's
        lps = logits(conv['ref'], torch.tensor([whole]))[0].log_softmax(-1)
        tgt = torch.tensor(whole[n_ctx:])
        pred = lps[n_ctx - 1:-1]
        want = pred.gather(-1, tgt[:, None]).sum().item()
        assert abs(lp - want) < 1e-4, (ctx, cont, lp, want)
        wants.append(want)
        assert greedy == bool((pred.argmax(-1) == tgt).all())
    # the multiple-choice answer (highest log-likelihood of the three) is the same either way
    assert max(range(3), key=lambda i: got[i][0]) == max(range(3), key=lambda i: wants[i])

def test_user_path_three_commands(conv, tmp_path):
    """The README path on the tiny checkpoint, each command run exactly as a user types it: convert a released
    checkpoint (the `conv` fixture), LoRA fine-tune the converted folder with the fine-tune notebook, serve the merged
    fine-tune it writes (`<out_dir>/merged`). The adapter loads onto the converted model, and the endpoint answers
    with the fine-tuned model's own greedy text."""
    dst, ft, q = conv['dst'], tmp_path / 'ft', lambda p: shlex.quote(str(p))
    finetune = (f"{cli('papermill')} experiments/finetune.ipynb {q(tmp_path / 'finetune.ipynb')} "
                f"-p base_model {q(dst)} -p out_dir {q(ft)} -p steps 3 -p max_train 24 -p seq_len 64 -p r 8 -p alpha 16 "
                f"-p heldout_alpaca 4 -p heldout_seed_tasks 4 -p n_samples 1 -p max_new_tokens 4")
    fin = Background(finetune, tmp_path / 'finetune.log')
    assert fin.wait(300) == 0, fin.logs()[-3000:]
    print(f"fine-tune: {time.time() - fin.t0:.1f} s"); fin.stop()
    metrics = json.loads((ft / 'metrics.json').read_text())
    assert metrics['base_model'] == str(dst) and metrics['layer_pattern'] == 'MAM' and metrics['steps'] == 3
    assert metrics['lora_modules'] == {'A': 4, 'M': 4, 'mlp': 9} and metrics['merged_vs_adapter_max_abs'] < 1e-3
    # the adapter belongs to the converted model: the project's loader checks its base fingerprint and coverage
    from hybridslm.post.lora import load_adapter
    pm = load_adapter(load(conv), ft / 'adapter')
    x, am = batch(conv['ref'].config.vocab_size, 3)
    assert (logits(pm, x, am) - logits(load(conv), x, am)).abs().max() > 1e-3     # the trained adapter changes the model
    merged = AutoModelForCausalLM.from_pretrained(str(ft / 'merged')).eval()
    assert (logits(merged, x, am) - logits(pm, x, am)).abs().max() < 1e-3          # the served folder is the fine-tune
    srv = start_server(ft / 'merged', tmp_path / 'serve.log')
    try:
        print('\n' + '\n'.join((conv['cmd'], finetune, srv.cmd)))
        name = 'merged'
        assert [m['id'] for m in httpx.get(srv.url + '/v1/models', timeout=10).json()['data']] == [name]
        r = httpx.post(srv.url + '/v1/completions', timeout=60, json=dict(model=name, prompt='Once upon a time', max_tokens=8, temperature=0))
        assert r.status_code == 200, r.text
        assert r.json()['choices'][0]['text'] == greedy_text(merged, conv['tok'], 'Once upon a time', 8)
        r = httpx.post(srv.url + '/v1/chat/completions', timeout=60, json=dict(
            model=name, messages=[{'role': 'user', 'content': 'Say hello.'}], max_tokens=8, temperature=0))
        assert r.status_code == 200 and r.json()['choices'][0]['message']['role'] == 'assistant', r.text
    finally: srv.stop()

def test_nemotron_h_blocks_through_onnx_and_int8(tmp_path):
    """A converted Nemotron-H (squared-ReLU MLP, MLP-less blocks, 24-wide heads, its own Mamba width, no RoPE, a dt clamp)
    through ONNX export and int8: onnxruntime equals torch on a left-padded batch, and int8 keeps the greedy choices."""
    pytest.importorskip('onnxruntime')
    from transformers import NemotronHConfig, NemotronHForCausalLM
    from hybridslm.convert import from_pretrained_hybrid
    from hybridslm.post.onnx_export import export_onnx, OnnxHybridLM
    from hybridslm.post.quantize import quantize_model
    torch.manual_seed(0)
    ref = NemotronHForCausalLM(NemotronHConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        layers_block_type=['linear_attention', 'mlp', 'full_attention', 'linear_attention', 'mlp', 'full_attention'],
        mamba_num_heads=6, mamba_head_dim=16, n_groups=2, ssm_state_size=16, chunk_size=8, pad_token_id=0)).eval()
    with torch.no_grad():
        for p in ref.parameters(): p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path / 'nemotron')
    m = from_pretrained_hybrid(tmp_path / 'nemotron')
    assert (m.config.layer_pattern, m.config.layers_without_mlp, m.config.mlp_act) == ('MAMA', [1, 3], 'relu2')
    ids, am = batch(96, 3)
    with torch.no_grad(): assert (logits(m, ids, am) - ref(ids, attention_mask=am).logits)[am.bool()].abs().max() < 1e-4
    export_onnx(m, tmp_path / 'onnx')
    lg, _ = OnnxHybridLM(tmp_path / 'onnx', threads=1).prefill(ids.numpy(), am.numpy())
    d = float(np.abs(lg - logits(m, ids, am).numpy())[am.bool().numpy()].max())
    print(f"\nNemotron-H blocks, ONNX vs torch (left-padded): {d:.2e}"); assert d < 1e-4
    q = quantize_model(m, 'int8')
    agree = (logits(q, ids, am).argmax(-1) == ref(ids, attention_mask=am).logits.argmax(-1))[am.bool()].float().mean().item()
    print(f"int8 top-1 agreement with Nemotron-H: {agree:.3f}"); assert agree >= 0.9
