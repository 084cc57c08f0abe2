"""Several nodes, without the nodes: the exact launcher command lines `launch_command` gives for 2 nodes x 8 GPUs
(torchrun on each node; DeepSpeed's launcher with a hostfile, once), the errors for settings that would hang at the
rendezvous or silently train on fewer GPUs, the hostfile reader against DeepSpeed's own parser, node 1 picking up
node 0's result, and the 6.7b/13b presets built on the meta device (what a launching kernel needs to count them)."""
import json, sys, threading, time
from pathlib import Path
import pytest, torch
from hybridslm.train.launch import (resolve_run, launch_command, read_hostfile, wait_for_result, build_model, RunConfig,
                                    RUN_DEFAULTS)

TWO_BY_EIGHT = dict(preset='13b', zero_stage=3, num_gpus=8, nnodes=2, master_addr='10.0.0.1', master_port=29500,
                    run_name='13b', out_dir='/shared/runs/13b')
PY = sys.executable

def test_torchrun_two_nodes_by_eight_gpus():
    for node in (0, 1):
        p = resolve_run({**TWO_BY_EIGHT, 'node_rank': node})
        cfg = '/shared/runs/13b/run.json' if node == 0 else '/shared/runs/13b/run-node1.json'
        assert launch_command(p, cfg) == [
            PY, '-m', 'torch.distributed.run', '--nproc_per_node=8', '--nnodes=2', f'--node_rank={node}',
            '--master_addr=10.0.0.1', '--master_port=29500', '-m', 'hybridslm.train.launch', '--config', cfg]
        assert p['distributed'] and p['zero_stage'] == 3

def test_deepspeed_hostfile_two_nodes_by_eight_gpus(tmp_path):
    hosts = tmp_path / 'hosts.txt'
    hosts.write_text('node0 slots=8\nnode1 slots=8\n')
    p = resolve_run({**TWO_BY_EIGHT, 'launcher': 'deepspeed', 'hostfile': str(hosts)})
    assert launch_command(p, '/shared/runs/13b/run.json') == [
        PY, '-m', 'deepspeed.launcher.runner', '--master_addr=10.0.0.1', '--master_port=29500', f'--hostfile={hosts}',
        '--num_nodes=2', '--num_gpus=8', '--module', 'hybridslm.train.launch', '--config', '/shared/runs/13b/run.json']
    # DeepSpeed's own argument parser reads these flags as meant
    from deepspeed.launcher.runner import parse_args
    a = parse_args(launch_command(p, 'run.json')[3:])
    assert (a.hostfile, a.num_nodes, a.num_gpus, a.master_addr, a.master_port, a.module) == (str(hosts), 2, 8, '10.0.0.1', 29500, True)
    assert a.user_script == 'hybridslm.train.launch' and a.user_args == ['--config', 'run.json']

def test_single_node_commands_unchanged():
    p = resolve_run({'num_gpus': 2, 'zero_stage': 2})
    assert launch_command(p, 'run.json') == [PY, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--nnodes=1', '--node_rank=0',
                                            '--master_addr=127.0.0.1', '--master_port=29500', '-m', 'hybridslm.train.launch', '--config', 'run.json']
    p = resolve_run({'num_gpus': 2, 'zero_stage': 2, 'launcher': 'deepspeed'})
    assert launch_command(p, 'run.json') == [PY, '-m', 'deepspeed.launcher.runner', '--master_addr=127.0.0.1', '--master_port=29500',
                                            '--num_gpus=2', '--module', 'hybridslm.train.launch', '--config', 'run.json']

BAD = [
    (dict(node_rank=2), 'node_rank=2 with nnodes=2: node_rank must be 0 .. 1'),
    (dict(node_rank=-1), 'node_rank must be 0 .. 1'),
    (dict(nnodes=0, node_rank=0), 'nnodes must be >= 1'),
    (dict(master_addr='127.0.0.1'), 'set master_addr to the address of node 0'),
    (dict(master_addr='localhost'), 'set master_addr to the address of node 0'),
    (dict(master_addr=''), 'set master_addr to the address of node 0'),
    (dict(master_port=0), 'master_port must be 1 .. 65535'),
    (dict(hostfile='hosts.txt'), 'torchrun reads no hostfile'),
    (dict(launcher='deepspeed'), 'needs a hostfile'),
    (dict(launcher='deepspeed', node_rank=1), "node_rank=1 with launcher='deepspeed'"),
]

@pytest.mark.parametrize('bad,says', BAD, ids=[s.split(':')[0][:30] for _, s in BAD])
def test_inconsistent_settings_fail_by_name(bad, says):
    with pytest.raises(ValueError) as e: resolve_run({**TWO_BY_EIGHT, **bad})
    assert says in str(e.value), str(e.value)
    with pytest.raises(ValueError): RunConfig.from_params({**TWO_BY_EIGHT, **bad}).resolve()   # the same rule for the typed config

HOSTFILES = [
    ('node1 slots=8\n', 'lists 1 host(s)'),                                            # nnodes=2
    ('node0 slots=8\nnode1 slots=8\nnode2 slots=8\n', 'lists 3 host(s)'),
    ('node0 slots=8\nnode1 slots=4\n', "slots {'node1': 4} differ from num_gpus=8"),
    ('node0 slots=8\nnode1 8\n', "line 2: 'node1 8' is not 'host slots=N'"),
    ('node0 slots=8\nnode0 slots=8\n', "host 'node0' is listed twice"),
    ('# no hosts\n\n', 'lists no host'),
    ('node0 slots=8\nnode1 slots=0\n', 'slots must be >= 1'),
]

@pytest.mark.parametrize('text,says', HOSTFILES)
def test_bad_hostfile_fails_by_name(tmp_path, text, says):
    hosts = tmp_path / 'hosts.txt'; hosts.write_text(text)
    with pytest.raises(ValueError) as e: resolve_run({**TWO_BY_EIGHT, 'launcher': 'deepspeed', 'hostfile': str(hosts)})
    assert says in str(e.value) and str(hosts) in str(e.value), str(e.value)

def test_missing_or_unreadable_hostfile(tmp_path):
    ds = {**TWO_BY_EIGHT, 'launcher': 'deepspeed'}
    with pytest.raises(ValueError, match='cannot read it'): resolve_run({**ds, 'hostfile': str(tmp_path / 'nope.txt')})
    with pytest.raises(ValueError, match='cannot read it'): resolve_run({**ds, 'hostfile': str(tmp_path)})     # a directory
    (tmp_path / 'bin').write_bytes(b'\xff\xfe\x00slots')
    with pytest.raises(ValueError, match='not a text file'): resolve_run({**ds, 'hostfile': str(tmp_path / 'bin')})
    # the ranks re-read the config without the hostfile (it lives on node 0 only)
    assert resolve_run({**ds, 'hostfile': str(tmp_path / 'nope.txt')}, check_hostfile=False)['nnodes'] == 2

def test_hostfile_reader_agrees_with_deepspeed(tmp_path):
    from deepspeed.launcher.runner import _parse_hostfile
    for text in ('node0 slots=8\nnode1 slots=8\n', '# cluster\n\n  a.example.org slots=4\n10.0.0.2 slots=16\n', 'x slots=1'):
        f = tmp_path / 'h'; f.write_text(text)
        assert read_hostfile(f) == dict(_parse_hostfile(text.splitlines(keepends=True)))
    for text in ('node1 8\n', 'a slots=1\na slots=2\n', '# only a comment\n'):          # both refuse these
        f = tmp_path / 'h'; f.write_text(text)
        with pytest.raises(ValueError): read_hostfile(f)
        with pytest.raises(ValueError): _parse_hostfile(text.splitlines(keepends=True))

def test_node1_waits_for_node0_result(tmp_path):
    res = tmp_path / 'result.json'
    res.write_text(json.dumps({'step': 1}))                   # an earlier run's result: not the one to return
    before = res.stat().st_mtime_ns
    def node0(): time.sleep(0.5); res.write_text(json.dumps({'step': 400}))
    threading.Thread(target=node0).start()
    t0 = time.monotonic()
    assert wait_for_result(res, before, timeout=10) == {'step': 400} and time.monotonic() - t0 >= 0.4
    with pytest.raises(RuntimeError, match='shared by all nodes'): wait_for_result(tmp_path / 'none.json', None, timeout=0.3)

def test_big_presets_build_on_meta():
    from hybridslm.data.tokenizer import load_tokenizer
    from hybridslm.model.config import count_params
    tok = load_tokenizer(RUN_DEFAULTS['tokenizer'])
    for preset, billions in (('6.7b', 7.3), ('13b', 14.4)):
        p = resolve_run({**TWO_BY_EIGHT, 'preset': preset})
        t0 = time.time()
        cfg, model = build_model(p, tok, 50304, meta=True)
        n = sum(q.numel() for q in model.parameters())
        assert all(q.device.type == 'meta' for q in model.parameters()) and n == count_params(cfg)
        assert abs(n / 1e9 - billions) < 0.05 and time.time() - t0 < 10, (preset, n)
    with pytest.raises(ValueError, match='exclude'): build_model(p, tok, 50304, zero3=True, meta=True)
