"Resumability of the curation pipeline: kill a worker (or the whole run) mid-way, rerun, get byte-identical output."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from hybridslm.data.sources import Mixture, SourceSpec
from hybridslm.data.pipeline import CurateConfig, curate, build_messy_sample, evaluate_messy
from hybridslm.data.pack import PackedTokenDataset

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'data'

def make_cfg(tmp, out, num_proc):
    mix = Mixture([SourceSpec('messy', .7, paths=[str(tmp / 'messy.jsonl')]),
                   SourceSpec('code', .3, 'txt', paths=['{stdlib}/json/*.py'], doc_per='file', filters=['length', 'pii'])], seed=3)
    return CurateConfig(mix, str(tmp / out), seq_len=128, seqs_per_shard=50, chunk_size=8, num_proc=num_proc, tokenizer_vocab=1024)

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('curate')
    truth = build_messy_sample(tmp / 'messy.jsonl', DATA / 'rawweb/c4_sample.jsonl', DATA / 'rawweb/lingua_sample.jsonl',
                               DATA / 'pretrain/wiki_sample.jsonl', seed=1)
    ref = curate(make_cfg(tmp, 'ref', 1))
    return tmp, truth, ref

def shard_bytes(d):
    idx = json.loads((d / 'shards/index.json').read_text())
    return [(d / 'shards' / s['file']).read_bytes() for s in idx['shards']], idx

def children(pid):
    out = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try: stat = (p / 'stat').read_text()
            except OSError: continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid: out.append(int(p.name))
    return out

def start_run(tmp, out):
    code = ("import sys; sys.path.insert(0, %r); from test_data_pipeline import make_cfg; from hybridslm.data.pipeline import curate; "
            "from pathlib import Path; curate(make_cfg(Path(%r), %r, 2))" % (str(ROOT / "tests"), str(tmp), out))
    return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def wait_for_chunks(d, n, proc, timeout=120):
    t0 = time.time()
    while len(list((d / 'chunks').glob('*.parquet'))) < n if (d / 'chunks').exists() else True:
        assert proc.poll() is None, 'run finished before it could be killed'
        assert time.time() - t0 < timeout
        time.sleep(0.01)

def check_same(tmp, out, ref):
    d = tmp / out
    rep = curate(make_cfg(tmp, out, 2))
    b, idx = shard_bytes(d); rb, ridx = shard_bytes(tmp / 'ref')
    assert b == rb                                                   # byte-identical packed output
    assert rep['reasons'] == ref['reasons'] and rep['dedup'] == ref['dedup']
    assert idx['n_docs'] == ridx['n_docs'] and idx['source_docs'] == ridx['source_docs']   # no lost / duplicated docs
    assert not list(d.glob('*/.*.tmp'))

def test_kill_worker_then_resume(setup):
    tmp, truth, ref = setup
    proc = start_run(tmp, 'killw')
    wait_for_chunks(tmp / 'killw', 3, proc)
    workers = children(proc.pid)
    assert workers, 'no pool worker found'
    os.kill(workers[0], signal.SIGKILL)                              # a pool worker dies mid-run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and b'BrokenProcessPool' in err, err[-2000:]
    assert not (tmp / 'killw/report.json').exists() and not (tmp / 'killw/plan.json').exists()
    done = len(list((tmp / 'killw/chunks').glob('*.parquet')))
    assert done >= 3
    check_same(tmp, 'killw', ref)

def test_kill_whole_run_then_resume(setup):
    tmp, truth, ref = setup
    proc = start_run(tmp, 'killall')
    wait_for_chunks(tmp / 'killall', 5, proc)
    os.killpg(proc.pid, signal.SIGKILL)                              # the whole run (main + workers) dies
    proc.wait(timeout=60)
    assert not (tmp / 'killall/report.json').exists()
    check_same(tmp, 'killall', ref)

def test_quality_on_messy_sample(setup):
    tmp, truth, ref = setup
    ev = evaluate_messy(tmp / 'ref', truth)
    assert ev['lang_support'] >= 20 and ev['lang_precision'] >= 0.95 and ev['lang_recall'] >= 0.9
    assert ev['pii_injected'] >= 40 and ev['pii_recall'] >= 0.95
    assert ev['dups_injected'] >= 20 and ev['dedup_recall'] >= 0.95
    assert ev['bad_input_reasons'] == {'malformed': 'malformed_json', 'bad_utf8': 'invalid_utf8', 'empty': 'empty',
                                       'short': 'too_short', 'too_long': 'too_long', 'spam': 'keyword_stuffing'}
    n_lines = sum(1 for _ in open(tmp / 'messy.jsonl', 'rb'))
    assert ref['docs_in']['messy'] == n_lines                        # every line accounted for, none silent
    ds = PackedTokenDataset(tmp / 'ref/shards')
    assert len(ds) == ref['n_seqs'] > 0 and ds[0].shape == (128,) and int(ds[0].max()) < ds.vocab_size
    assert (sum(int((ds[i] == ds.eos_token_id).sum()) for i in range(len(ds))) <= ref['n_docs_packed'])

def test_idempotent_and_config_guard(setup):
    tmp, truth, ref = setup
    assert curate(make_cfg(tmp, 'ref', 2)) == ref                     # num_proc is not part of the output
    cfg = make_cfg(tmp, 'ref', 1); cfg.seq_len = 64
    with pytest.raises(ValueError, match='another config'): curate(cfg)
