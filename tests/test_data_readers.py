"Readers never crash on one bad record: every bad record or file is counted with its reason and the rest goes on."
import bz2, gzip, json, os, shutil
from pathlib import Path
import pytest
from hybridslm.data.sources import SourceSpec, iter_records
from hybridslm.data.pipeline import CurateConfig, curate
from hybridslm.data.pack import PackedTokenDataset

ROOT = Path(__file__).resolve().parent.parent
C4 = [json.loads(l)['text'] for l in open(ROOT / 'data/rawweb/c4_sample.jsonl', encoding='utf-8')]
GOOD = [json.dumps({'text': t}).encode() for t in C4[:3]]

def read(path, max_bytes=8_000_000, **kw):
    return list(iter_records(SourceSpec('s', 1, paths=[str(path)], **kw), max_bytes=max_bytes))

def errors(recs): return [r.get('error') for r in recs]

def test_lone_surrogate_is_counted_not_fatal(tmp_path):
    p = tmp_path / 'a.jsonl'
    p.write_bytes(GOOD[0] + b'\n{"text": "half a pair \\ud800 here"}\n{"text": "\\udfff"}\n' + GOOD[1] + b'\n')
    recs = read(p)
    assert errors(recs) == [None, 'lone_surrogate', 'lone_surrogate', None]
    assert [r['text'] for r in recs if 'text' in r] == C4[:2]
    for r in recs:
        if 'text' in r: r['text'].encode('utf-8')               # everything handed on is writable UTF-8

def test_bom_on_first_line_keeps_the_document(tmp_path):
    p = tmp_path / 'bom.jsonl'
    p.write_bytes(b'\xef\xbb\xbf' + GOOD[0] + b'\r\n' + GOOD[1] + b'\r\n')
    assert [r.get('text') for r in read(p)] == C4[:2]
    t = tmp_path / 'bom.txt'; t.write_bytes(b'\xef\xbb\xbfHello there\nsecond\n')
    assert [r['text'] for r in read(t, kind='txt')] == ['Hello there', 'second']
    assert [r['text'] for r in read(t, kind='txt', doc_per='file')] == ['Hello there\nsecond\n']

def test_empty_file_and_directory_errors(tmp_path):
    (tmp_path / 'e.jsonl').write_bytes(b'')
    assert errors(read(tmp_path / 'e.jsonl')) == ['empty_file']
    (tmp_path / 'e.jsonl.gz').write_bytes(gzip.compress(b''))
    assert errors(read(tmp_path / 'e.jsonl.gz')) == ['empty_file']
    (tmp_path / 'd' / 'sub').mkdir(parents=True)
    with pytest.raises(ValueError, match='is a directory'): read(tmp_path / 'd')
    with pytest.raises(ValueError, match=r'matches no file \(only 1 directory\)'): read(tmp_path / 'd' / '*')
    with pytest.raises(ValueError, match='matches no file'): read(tmp_path / 'nope' / '*.jsonl')

def test_truncated_and_corrupt_compressed_files(tmp_path):
    body = b''.join(GOOD[i % 3] + b'\n' for i in range(600))
    gz = gzip.compress(body); (tmp_path / 't.jsonl.gz').write_bytes(gz[:len(gz) // 2])
    recs = read(tmp_path / 't.jsonl.gz')
    assert errors(recs)[-1] == 'truncated_file' and 'EOFError' in recs[-1]['detail']
    assert 0 < len(recs) - 1 < 600 and all(r.get('text') == C4[i % 3] for i, r in enumerate(recs[:-1]))   # what was readable
    assert recs[-1]['key'] == f's/0/{len(recs) - 1}'                                                      # keys stay unique
    bz = bz2.compress(body); (tmp_path / 't.jsonl.bz2').write_bytes(bz[:len(bz) // 2])
    assert errors(read(tmp_path / 't.jsonl.bz2'))[-1] == 'truncated_file'
    (tmp_path / 'plain.jsonl.gz').write_bytes(GOOD[0] + b'\n')                                            # not gzip at all
    assert errors(read(tmp_path / 'plain.jsonl.gz')) == ['corrupt_file']
    (tmp_path / 'bad.parquet').write_bytes(b'PAR1 not really parquet')
    assert errors(read(tmp_path / 'bad.parquet', kind='parquet')) == ['corrupt_file']
    # one bad file among good ones: the good files are still read
    (tmp_path / 'ok.jsonl.gz').write_bytes(gzip.compress(GOOD[2] + b'\n'))
    recs = list(iter_records(SourceSpec('s', 1, paths=[str(tmp_path / 'plain.jsonl.gz'), str(tmp_path / 'ok.jsonl.gz')])))
    assert errors(recs) == ['corrupt_file', None] and recs[1]['text'] == C4[2] and recs[1]['key'] == 's/1/0'

def test_every_bad_line_has_its_reason(tmp_path):
    p = tmp_path / 'm.jsonl'
    lines = [GOOD[0], b'{"text": "cut off', b'{"text": "caf\xe9"}', b'[1, 2]', b'"just a string"', b'null', b'42',
             b'{"body": "no text field"}', b'{"text": 42}', b'{"text": ["a", "b"]}', b'{"text": null}', b'{"text": " \\t "}',
             b'', b'[' * 5000, b'{"text": "' + b'x' * 30000 + b'"}', b'\x00\x01\x02', GOOD[1]]
    p.write_bytes(b'\n'.join(lines) + b'\n')
    recs = read(p, max_bytes=20000)
    assert errors(recs) == [None, 'malformed_json', 'invalid_utf8', 'malformed_json', 'malformed_json', 'malformed_json',
                            'malformed_json', 'missing_field', 'not_text', 'not_text', 'missing_field', 'empty', 'empty',
                            'malformed_json', 'too_large', 'malformed_json', None]
    assert [r['key'] for r in recs] == [f's/0/{i}' for i in range(len(lines))]                          # one record per line
    assert recs[-1]['text'] == C4[1]
    deep = tmp_path / 'deep.jsonl'; deep.write_bytes(b'[' * 200_000 + b']' * 200_000 + b'\n' + GOOD[0] + b'\n')
    assert errors(read(deep)) == ['malformed_json', None]                                               # RecursionError caught

def test_huge_line_is_skipped_without_losing_the_next(tmp_path):
    p = tmp_path / 'h.jsonl'
    p.write_bytes(b'{"text": "' + b'y' * 5_000_000 + b'"}\n' + GOOD[0] + b'\n')
    recs = read(p, max_bytes=100_000)
    assert errors(recs) == ['too_large', None] and recs[1]['text'] == C4[0]

def curate_cfg(tmp, out, paths):
    from hybridslm.data.sources import Mixture
    return CurateConfig(Mixture([SourceSpec('web', 1, paths=paths)]), str(tmp / out), seq_len=64, seqs_per_shard=64,
                        chunk_size=16, tokenizer_vocab=512)

def test_pipeline_survives_bad_records_and_reruns(tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_bytes(b'\xef\xbb\xbf' + b'\n'.join(json.dumps({'text': t}).encode() for t in C4[:20]) + b'\n'
                    + b'{"text": "lone \\ud800 surrogate ' + b'word ' * 40 + b'"}\n[3]\n')
    (tmp_path / 'empty.jsonl').write_bytes(b'')
    gz = gzip.compress(b''.join(json.dumps({'text': t}).encode() + b'\n' for t in C4[20:40]))
    (tmp_path / 'trunc.jsonl.gz').write_bytes(gz[:len(gz) * 2 // 3])
    cfg = curate_cfg(tmp_path, 'run', [str(tmp_path / '*.jsonl'), str(tmp_path / '*.jsonl.gz')])
    rep = curate(cfg)
    r = rep['reasons']['web']
    assert r['lone_surrogate'] == 1 and r['malformed_json'] == 1 and r['empty_file'] == 1 and r['truncated_file'] == 1
    assert 'malformed_json' not in r or r['malformed_json'] == 1                 # the BOM line was not called malformed
    n_trunc = sum(1 for _ in iter_records(SourceSpec('t', 1, paths=[str(tmp_path / 'trunc.jsonl.gz')])))
    assert rep['docs_in']['web'] == 22 + 1 + n_trunc                              # every record and bad file accounted for
    assert len(PackedTokenDataset(tmp_path / 'run/shards')) == rep['n_seqs'] > 0
    assert sorted((Path(b['file']).name, b['reason']) for b in rep['bad_files']['web']) == [('empty.jsonl', 'empty_file'),
                                                                                         ('trunc.jsonl.gz', 'truncated_file')]
    assert curate(cfg) == rep                                                     # the rerun does not crash either
    # a run killed while packing leaves `.shards.<id>.tmp`; the resume removes it and packs the same bytes
    shards = {f.name: f.read_bytes() for f in (tmp_path / 'run/shards').iterdir()}
    shutil.rmtree(tmp_path / 'run/shards'); (tmp_path / 'run/report.json').unlink()
    junk = tmp_path / 'run/.shards.0123abcd.tmp'; junk.mkdir(); (junk / 'shard-00000.bin').write_bytes(b'half')
    (tmp_path / 'run/tokens/.web-000000.npz.dead.tmp').write_bytes(b'half')
    rep2 = curate(cfg)
    assert {k: v for k, v in rep2.items() if k != 'seconds'} == {k: v for k, v in rep.items() if k != 'seconds'}
    assert not list((tmp_path / 'run').glob('**/.*.tmp'))
    assert {f.name: f.read_bytes() for f in (tmp_path / 'run/shards').iterdir()} == shards

def test_pipeline_with_only_an_empty_file_says_so(tmp_path):
    (tmp_path / 'empty.jsonl').write_bytes(b'')
    with pytest.raises(ValueError, match=r"nothing to pack.*'empty_file': 1"):
        curate(curate_cfg(tmp_path, 'run', [str(tmp_path / 'empty.jsonl')]))
