"""The fast paths of the filter chain and of tokenize + pack give what straightforward reference implementations give.

Each reference below is written independently of the code it checks: py3langid's own classifier for language ID, n-gram
strings counted with `Counter` for the Gopher repetition features, every PII detector scanning the whole text with its
plain pattern (no gates), and tokens from the `transformers` tokenizer call concatenated with EOS and cut into rows with
numpy for packing. Inputs are the shipped real documents (C4 pages, Wikipedia articles, the public-domain books, the
multilingual lingua sentences) plus synthetic repetitive and PII-dense texts.
"""
import json, re
from collections import Counter
from pathlib import Path
import numpy as np, pytest
import hybridslm
from hybridslm.data import filters as F
from hybridslm.data.pack import PackWriter, PackedTokenDataset, pack_texts, tokenize
from hybridslm.data.tokenizer import load_demo_corpus, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / 'data'


def _jsonl(p): return [json.loads(l) for l in open(p, encoding='utf-8')]


@pytest.fixture(scope='module')
def docs():
    "The documents `curation_throughput` measures on, plus the lingua sentences alone and three to a document."
    c4 = [d['text'] for d in _jsonl(DATA / 'rawweb/c4_sample.jsonl')]
    wiki = [d['text'] for d in _jsonl(DATA / 'pretrain/wiki_sample.jsonl')]
    books = [' '.join(w[i:i + 500]) for _, t in sorted(load_demo_corpus().items()) for w in [t.split()] for i in range(0, len(w) - 500, 5000)]
    lingua = _jsonl(DATA / 'rawweb/lingua_sample.jsonl')
    by = {}
    for s in lingua: by.setdefault(s['lang'], []).append(s['text'])
    joined = [' '.join(v[i:i + 3]) for _, v in sorted(by.items()) for i in range(0, len(v) - 2, 3)]
    return dict(bench=c4 + wiki + books, web=c4 + wiki + books + joined + [s['text'] for s in lingua])


def _synthetic():
    rng = np.random.default_rng(0)
    out = [' '.join(map(str, rng.integers(0, v, rng.integers(0, 80)))) for v in (1, 2, 3, 5, 20) for _ in range(40)]
    out += ['a ' * 12, 'a b c d e ' * 3, 'One. one, ONE! (one) "one" x y', '', ' ', 'word']
    return out


# --- language ID: py3langid's own classifier -------------------------------------------------------------------------
def test_language_id_is_py3langids(docs):
    from py3langid.langid import LanguageIdentifier, MODEL_FILE
    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    texts = docs['web'] + _synthetic()[:20]
    got = [F.detect_language(t) for t in texts]
    want = [ref.classify(t[:2000]) for t in texts]
    assert got == want                                        # the same language and the same float for every text
    assert len({l for l, _ in got}) > 20


def test_language_id_long_texts_are_py3langids(docs):
    "Texts of 2**14 bytes and more take the stable-sort path, shorter ones the packed-key sort: both are py3langid's."
    from py3langid.langid import LanguageIdentifier, MODEL_FILE
    ref = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    long = ' '.join(docs['bench'])
    multi = ' '.join(docs['web'][-300:])                      # lingua sentences: many scripts, 2-4 bytes a character
    texts = [long[:n] for n in (16383, 16384, 16385, 40000)] + [multi[:n] for n in (4095, 4096, 6000, 20000)]
    assert min(len(t.encode()) for t in texts[4:6]) < 1 << 14 <= max(len(t.encode()) for t in texts)
    got = [F.detect_language(t, max_chars=50_000) for t in texts]
    assert got == [ref.classify(t) for t in texts]


# --- Gopher/C4 quality features: n-gram strings and Counter ----------------------------------------------------------
def ref_quality_features(text):
    def dup(words, n):
        if len(words) < n: return 0.
        grams = [' '.join(words[i:i + n]) for i in range(len(words) - n + 1)]
        c = Counter(grams); d = np.zeros(len(words), bool)
        for i, g in enumerate(grams):
            if c[g] > 1: d[i:i + n] = True
        lens = np.fromiter((len(w) for w in words), int, len(words))
        return float(lens[d].sum() / max(1, lens.sum()))
    def top(words, n):
        if len(words) < n: return 0.
        c = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        g, cnt = c.most_common(1)[0]
        return sum(map(len, g)) * cnt / max(1, sum(map(len, words)))
    words = text.split(); nw = max(1, len(words))
    lines = [l.strip() for l in text.splitlines() if l.strip()]; nl = max(1, len(lines)); lc = Counter(lines)
    lw = [w.lower().strip('.,;:!?"\'()') for w in words]
    return dict(n_words=len(words), mean_word_len=sum(map(len, words)) / nw,
                symbol_ratio=(text.count('#') + text.count('...') + text.count('…')) / nw,
                bullet_lines=sum(l.startswith(F.BULLETS) for l in lines) / nl,
                ellipsis_lines=sum(l.endswith(('...', '…')) for l in lines) / nl,
                alpha_words=sum(any(ch.isalpha() for ch in w) for w in words) / nw,
                stop_words=sum(w in F.STOP_WORDS for w in lw),
                dup_lines=sum(c - 1 for c in lc.values()) / nl,
                dup_line_chars=sum(len(l) * (c - 1) for l, c in lc.items()) / max(1, sum(map(len, lines))),
                terminal_punct_lines=sum(l.endswith(('.', '!', '?', '"', '”')) for l in lines) / nl,
                top_2gram=top(lw, 2), top_3gram=top(lw, 3), top_4gram=top(lw, 4), dup_5gram=dup(lw, 5), dup_10gram=dup(lw, 10))


def test_quality_features_match_counter_reference(docs):
    texts = docs['web'] + _synthetic()
    bad = [i for i, t in enumerate(texts) if F.quality_features(t) != ref_quality_features(t)]
    assert not bad, (bad[:5], texts[bad[0]][:200])
    # the repetition features are not all zero: the comparison covers their non-trivial branches
    feats = [F.quality_features(t) for t in texts]
    assert sum(f['dup_5gram'] > 0 for f in feats) > 50 and sum(f['dup_10gram'] > 0 for f in feats) > 20


# --- PII: every detector over the whole text, no gates ---------------------------------------------------------------
PLAIN_PHONE_RX = re.compile(     # the phone pattern without its leading one-character lookahead
    r'(?<![\w+])(?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?\(0\))?[ .-]?\(?\d{1,5}\)?(?:[ .-]?\d{2,6}){1,5}(?![\w]|[-.]\d)'
    r'|(?<![\w+(])(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w]|[-.]\d)'
    r'|(?<![\w+.,/-])0[1-9]\d{0,3}(?:[ /-]\d{2,6}){1,4}(?![\w]|[-./]\d)')


def ref_redact_pii(text):
    counts = Counter()
    def sub(rx, tag, check=None, group=0):
        nonlocal text
        def f(m):
            if check and not check(m): return m.group(0)
            counts[tag] += 1
            return m.group(0)[:m.start(group) - m.start()] + f'<{tag}>' + m.group(0)[m.end(group) - m.start():]
        text = rx.sub(f, text)
    sub(F.EMAIL_RX, 'EMAIL', lambda m: F._email_ok(m.group(0)))
    spans = list(F._iban_spans(text))
    for a, b in reversed(spans): text = text[:a] + '<IBAN>' + text[b:]
    if spans: counts['IBAN'] += len(spans)
    sub(F.CARD_RX, 'CREDIT_CARD', lambda m: F.card_ok(m.group(0))); sub(F.SSN_RX, 'SSN'); sub(F.SSN_CUE_RX, 'SSN', group=1)
    sub(F.IPV6_RX, 'IP', lambda m: F._ipv6_ok(m.group(0))); sub(F.IP_RX, 'IP', lambda m: F._ipv4_ok(m.string, m))
    sub(PLAIN_PHONE_RX, 'PHONE', F._phone_ok)
    return text, dict(counts)


def test_pii_matches_ungated_reference(docs):
    evals = [d['text'] for d in _jsonl(Path(hybridslm.__file__).parent / 'assets/filters_eval/pii_eval.jsonl')]
    dense = ['Card 4111 1111 1111 1111 or 4111-1111-1111-1111, server 192.168.0.17, SSN 123-45-6789, ssn 123 45 6789, '
             'IBAN DE89 3704 0044 0532 0130 00, GB82WEST12345698765432, call +44 20 7946 0958 or (555) 123-4567 or 020 7946 0018, '
             'fe80::1ff:fe23:4567:890a, ::1, jane.doe@example.co.uk, version 1.2.3.4, ping 1.2.3.4, ſsn 123456789']
    texts = docs['web'] + evals + dense + _synthetic()
    got = [F.redact_pii(t) for t in texts]
    assert got == [ref_redact_pii(t) for t in texts]
    found = Counter(k for _, c in got for k in c)
    assert set(found) == set(F.PII_TYPES)                    # every detector found something: none is gated away for good


# --- tokenize + pack: the transformers call, EOS, numpy rows ---------------------------------------------------------
def _read_rows(out):
    ds = PackedTokenDataset(out, verify=True)
    return np.stack([ds[i].numpy() for i in range(len(ds))]) if len(ds) else np.zeros((0, ds.seq_len), np.int64), ds.index


@pytest.mark.parametrize('seq_len,per_shard,batch_size', [(1024, 4096, 64), (1024, 7, 64), (64, 100, 5), (37, 1, 300)])
def test_pack_matches_reference(docs, tmp_path, seq_len, per_shard, batch_size):
    tok = load_tokenizer()
    texts = docs['bench'] + ['', ' ', 'x']
    ids = [np.asarray(i, np.int64) for i in tok(texts, add_special_tokens=False)['input_ids']]
    got_ids = tokenize(texts, tok, batch_size=batch_size)
    assert len(got_ids) == len(ids) and all(a.dtype == np.uint32 and np.array_equal(a, b) for a, b in zip(got_ids, ids))
    stream = np.concatenate([x for i in ids for x in (i, [tok.eos_token_id])])
    n = len(stream) // seq_len
    idx = pack_texts(texts, tok, seq_len, tmp_path / 'p', seqs_per_shard=per_shard, batch_size=batch_size)
    rows, index = _read_rows(tmp_path / 'p')
    assert np.array_equal(rows, stream[:n * seq_len].reshape(n, seq_len))
    assert (idx['n_docs'], idx['n_doc_tokens'], idx['dropped_tail_tokens']) == (len(texts), sum(map(len, ids)), len(stream) - n * seq_len)
    assert [s['n_seqs'] for s in idx['shards']] == [min(per_shard, n - k) for k in range(0, n, per_shard)] and index == idx


def test_add_many_is_add_for_each(docs, tmp_path):
    tok = load_tokenizer()
    ids = tokenize(docs['bench'][:40], tok)
    a = PackWriter(tmp_path / 'a', 128, len(tok), tok.eos_token_id, seqs_per_shard=9)
    for i in ids: a.add(i)
    b = PackWriter(tmp_path / 'b', 128, len(tok), tok.eos_token_id, seqs_per_shard=9)
    for k in range(0, len(ids), 7): b.add_many(ids[k:k + 7])
    b.add_many([])
    assert a.close() == b.close()
    assert all((tmp_path / 'a' / s).read_bytes() == (tmp_path / 'b' / s).read_bytes() for s in [p.name for p in (tmp_path / 'a').glob('shard-*')])
    w = PackWriter(tmp_path / 'c', 16, 100, 0)
    with pytest.raises(ValueError, match='out of range'): w.add_many([np.array([1, 2]), np.array([100])])
    with pytest.raises(ValueError, match='out of range'): w.add_many([np.array([-1])])
    with pytest.raises(ValueError, match='integers'): w.add_many([np.array([1.5])])


# --- the whole chain: the same decision, text, score and language for every document --------------------------------
def test_apply_filters_matches_reference_chain(docs):
    from py3langid.langid import LanguageIdentifier, MODEL_FILE
    lid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    cfg = F.FilterConfig()
    def ref(text):
        out = dict(text=None, reason=None, quality=None, pii={}, lang=None, lang_score=None)
        text = '\n'.join(l for l in text.split('\n') if not F.BOILERPLATE_RX.search(l))
        if (r := F.length_reason(text)): out['reason'] = r; return out
        if (r := ref_spam_reason(text)): out['reason'] = r; return out
        out['lang'], out['lang_score'] = lid.classify(text[:cfg.lang_max_chars])
        if not (out['lang'] == 'en' and out['lang_score'] > cfg.lang_threshold): out['reason'] = 'language'; return out
        h = ref_count_profanity(text)
        if h >= cfg.profanity_min_hits and h / max(1, len(text.split())) > cfg.profanity_max_ratio: out['reason'] = 'profanity'; return out
        text, out['pii'] = ref_redact_pii(text)
        out['quality'] = F.quality_score(ref_quality_features(text)); out['text'] = text
        return out
    texts = docs['web']
    got = [F.apply_filters(t) for t in texts]
    assert got == [ref(t) for t in texts]
    reasons = Counter(o['reason'] for o in got)
    assert reasons[None] > 200 and reasons['language'] > 300      # both kept and dropped documents are compared


def test_remove_boilerplate_matches_line_by_line(docs):
    lines = ['Please Log In To Reply', 'We use COOKIES to improve your visit. Accept', 'Skip to Main Content', 'Terms of Service apply',
             'Powered by WordPress', 'Sign up for the newsletter!', 'Share on Twitter', 'JavaScript is disabled', 'All Rights Reserved.',
             'the terms of the deal', 'he went in to town', 'a newsletter came', 'İstanbul click here']
    texts = docs['web'] + ['\n'.join(lines)] + [t + '\n' + l for t in docs['bench'][:60] for l in lines]
    ref = lambda t: '\n'.join(l for l in t.split('\n') if not F.BOILERPLATE_RX.search(l))
    got = [F.remove_boilerplate(t) for t in texts]
    assert got == [ref(t) for t in texts]
    assert sum(g != t for g, t in zip(got, texts)) > 400 and sum(g == t for g, t in zip(got, texts)) > 500


def ref_count_profanity(text, langs=('en',)):
    "Every token of the page against the listed phrases starting with it, and against the listed words' plurals."
    idx, toks, hits = F._bad_index(langs), re.findall(r'\w+|[^\w\s]', text.lower()), 0
    for i, t in enumerate(toks):
        if t in idx: hits += any(tuple(toks[i:i + len(c)]) == c for c in idx[t])
        elif t.endswith('s') and len(t) > 3 and (t[:-1],) in idx.get(t[:-1], ()): hits += 1
    return hits


def test_count_profanity_matches_reference(docs):
    rng = np.random.default_rng(1)
    listed = F.load_badwords(('en',))
    mixed = [' '.join(rng.choice(listed + [w + 's' for w in listed[:50]] + ['🖕', 'the', 'class', 'assassin', 'Scunthorpe.', 'two', 'girls'],
                                 rng.integers(1, 40))) for _ in range(300)]
    texts = docs['web'] + mixed
    for langs in (('en',), 'all'):
        got = [F.count_profanity(t, langs) for t in texts]
        assert got == [ref_count_profanity(t, langs) for t in texts]
    assert sum(g > 0 for g in got) > 250


def ref_spam_reason(text, max_url_frac=0.2, max_top_word_frac=0.1):
    low = text.lower()
    if 'lorem ipsum' in low: return 'lorem_ipsum'
    words = low.split()
    if not words: return None
    if len(F.URL_RX.findall(text)) / len(words) > max_url_frac: return 'link_spam'
    content = [w for w in words if len(w) > 3 and w not in F.STOP_WORDS]
    if len(words) >= 50 and content and Counter(content).most_common(1)[0][1] / len(words) > max_top_word_frac: return 'keyword_stuffing'
    return None


def test_spam_reason_matches_reference(docs):
    stuffed = [' '.join(['buy cheap watches online'] * 60), ' '.join(['best', 'replica', 'watch', 'the'] * 13), 'lorem ipsum ' * 30,
               ' '.join(['http://x.example/a'] * 10 + ['word'] * 30)]
    texts = docs['web'] + stuffed + _synthetic()
    got = [F.spam_reason(t) for t in texts]
    assert got == [ref_spam_reason(t) for t in texts]
    assert {'keyword_stuffing', 'lorem_ipsum', 'link_spam'} <= set(got)


def test_spam_reason_on_stop_words_only():
    "Fifty words, none of them a content word: no keyword stuffing (this used to raise IndexError)."
    assert F.spam_reason(' '.join(['the', 'and', 'to', 'of'] * 20)) is None
