"Filters, dedup and packing on real data (repo data/ subsets; the full lingua set when HYBRIDSLM_DATA_DIR points at a copy)."
import gzip, json, random
from pathlib import Path
import numpy as np, pytest, torch
from hybridslm.data.filters import (language_filter, redact_pii, luhn_ok, quality_keep, add_quality, count_profanity,
                                    load_badwords, apply_filters, FilterConfig)
from hybridslm.data.dedup import minhash, exact_hash, dedup, perturb
from hybridslm.data.pack import PackWriter, PackedTokenDataset, pack_texts, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'data'
import os
SHARED_LINGUA = Path(os.environ.get('HYBRIDSLM_DATA_DIR', '/nonexistent')) / 'rawweb/lingua_sentences.jsonl.gz'
c4 = [json.loads(l)['text'] for l in open(DATA / 'rawweb/c4_sample.jsonl')]

def lingua():
    if SHARED_LINGUA.exists(): return [json.loads(l) for l in gzip.open(SHARED_LINGUA, 'rt')]
    return [json.loads(l) for l in open(DATA / 'rawweb/lingua_sample.jsonl')]

def test_language_id_against_gold():
    by = {}
    for s in lingua(): by.setdefault(s['lang'], []).append(s['text'])
    docs = [(l, ' '.join(v[i:i + 3])) for l, v in sorted(by.items()) for i in range(0, len(v) - 2, 3)]
    keep = language_filter({'text': [t for _, t in docs]})
    gold = [l == 'en' for l, _ in docs]
    tp = sum(k and g for k, g in zip(keep, gold))
    assert sum(gold) >= 20
    assert tp / sum(keep) >= 0.95 and tp / sum(gold) >= 0.9          # precision, recall of English, p > 0.9

def test_pii_real_and_negative():
    found = [redact_pii(t)[1] for t in c4]
    assert sum(f.get('EMAIL', 0) for f in found) >= 5 and sum(f.get('PHONE', 0) for f in found) >= 4
    t, c = redact_pii('Reach me at a.b@c-d.com, 212-555-0187, 10.0.0.254, card 5500-0000-0000-0004.')
    assert c == {'EMAIL': 1, 'PHONE': 1, 'IP': 1, 'CREDIT_CARD': 1} and '<CREDIT_CARD>' in t
    for s in ['Founded in 1887, it cost $2,499.00 in 2015.', 'Score 3-1 on 2021-03-04 at 10.30 am, page 123-4567',
              'Tracking 1Z999AA10123456784 and 4111 1111 1111 1112.', 'Version 2.7.18 of the 256.1.1.1 thing']:
        assert redact_pii(s) == (s, {}), s
    assert luhn_ok('4111111111111111') and not luhn_ok('4111111111111112')

def test_quality_cut_and_profanity():
    q = add_quality({'text': c4})['quality']
    keep = quality_keep(q, list(range(len(q))), 0.3)
    assert keep.sum() == len(q) - 18 and np.min(np.array(q)[keep]) >= np.max(np.array(q)[~keep])
    bad = load_badwords()
    dirty = c4[0] + ' ' + ' '.join(bad[::50])
    assert apply_filters(dirty)['reason'] == 'profanity' and apply_filters(c4[0])['reason'] is None
    assert count_profanity('Assessment of the classic Scunthorpe assassin.') == 0

def test_dedup_near_duplicates_cluster_distinct_do_not():
    rng = random.Random(0)
    base = [t for t in c4 if len(t.split()) > 200][:15]
    near = [perturb(t, .01, seed=i) for i, t in enumerate(base)]
    docs = base + near
    res = dedup([str(i) for i in range(len(docs))], [exact_hash(d) for d in docs], [minhash(d) for d in docs])
    assert res.keep[:15].all() and not res.keep[15:].any() and res.n_near == 15
    for i in range(15): assert [k for k, _, _ in res.clusters[str(i)]] == [str(15 + i)]

def test_packed_dataset_contract(tmp_path):
    tok = train_tokenizer(c4, vocab_size=600)
    idx = pack_texts(c4[:20], tok, 64, tmp_path / 'p', seqs_per_shard=16)
    ds = PackedTokenDataset(tmp_path / 'p')
    assert len(ds) == idx['n_seqs'] and ds.seq_len == 64 and ds.vocab_size == 600 and ds.eos_token_id == tok.eos_token_id
    assert isinstance(ds[0], torch.Tensor) and ds[0].dtype == torch.long and ds[0].shape == (64,)
    assert (tmp_path / 'p/shard-00000.bin').stat().st_size == 16 * 64 * 2                        # uint16 rows
    w = PackWriter(tmp_path / 'big', 32, 70_000, 69_999, seqs_per_shard=8)                         # vocab > 65536: uint32
    ids = np.random.default_rng(0).integers(0, 70_000, 1000)
    w.add(ids); w.close()
    big = PackedTokenDataset(tmp_path / 'big')
    assert big.index['dtype'] == 'uint32' and torch.equal(big[1], torch.from_numpy(ids[32:64]))
    with pytest.raises(ValueError, match='index.json'): PackedTokenDataset(tmp_path)
