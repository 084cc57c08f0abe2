"""Hostile HumanEval-style samples must be contained by `hybridslm.eval.sandbox` and scored as failures.

Each hostile sample runs twice: with the Python guard and with `guard=False`, so the OS layers (namespaces,
Landlock, rlimits, timeout) are tested on their own."""
import os, socket, sys, textwrap, time
from pathlib import Path
import pytest
from hybridslm.eval.sandbox import run_sandboxed, check_program
from hybridslm.eval.data import load_task
from hybridslm.eval.harness import humaneval_program

pytestmark = pytest.mark.skipif(sys.platform != 'linux', reason='the sandbox uses Linux namespaces/Landlock')
REPO = Path(__file__).resolve().parents[1]
GUARD = [True, False]

def _procs_with(marker: str) -> list[int]:
    "PIDs whose command line contains `marker` (leftover sandbox processes)."
    out = []
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / 'cmdline').read_bytes(): out.append(int(p.name))
            except OSError: pass
    return out

def test_correct_solution_passes_and_wrong_fails():
    for prob in load_task('humaneval', limit=3):
        r = check_program(humaneval_program(prob, prob['canonical_solution']))
        assert r.passed and r.status == 'passed', (prob['task_id'], r.output)
        assert not check_program(humaneval_program(prob, '    return None\n')).passed

@pytest.mark.parametrize('guard', GUARD)
def test_infinite_loop_times_out(guard):
    t0 = time.monotonic()
    r = run_sandboxed('while True:\n    pass\n', timeout=1.0, guard=guard)
    assert r.status == 'timeout' and not r.passed and time.monotonic() - t0 < 6

@pytest.mark.parametrize('guard', GUARD)
def test_huge_allocation_fails(guard):
    r = run_sandboxed('x = bytearray(8 * 1024**3)\nprint("allocated")\n', memory_mb=512, guard=guard)
    assert not r.passed and 'MemoryError' in r.output and 'allocated' not in r.output

@pytest.mark.parametrize('guard', GUARD)
def test_fork_bomb_is_contained(guard):
    marker = f'forkbomb-{os.getpid()}-{guard}'
    prog = textwrap.dedent(f'''
        import os, time  # {marker}
        n = 0
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(1000)
                n += 1
            except OSError:
                time.sleep(0.01)
    ''')
    r = run_sandboxed(prog, timeout=1.5, max_procs=32, guard=guard)
    assert not r.passed and r.workdir
    time.sleep(0.3)
    # the forked children share the runner's argv (which holds the temp dir); none may survive
    assert _procs_with(r.workdir) == [], 'sandbox processes survived'

@pytest.mark.parametrize('guard', GUARD)
def test_spawning_processes_in_a_loop_is_contained(guard):
    marker = f'spawnloop{os.getpid()}{int(guard)}'
    prog = textwrap.dedent(f'''
        import subprocess, sys
        for i in range(500):
            subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)  # {marker}'])
        raise SystemExit(0) if False else None
        while True: pass
    ''')
    r = run_sandboxed(prog, timeout=1.5, max_procs=16, guard=guard)
    assert not r.passed
    time.sleep(0.3)
    assert _procs_with(marker) == [], 'spawned processes survived the sandbox'

@pytest.mark.parametrize('guard', GUARD)
def test_cannot_delete_files_outside_its_directory(tmp_path, guard):
    victim = tmp_path / 'victim.txt'; victim.write_text('keep me')
    vdir = tmp_path / 'victim_dir'; vdir.mkdir(); (vdir / 'a.txt').write_text('a')
    prog = f'import os, shutil\nos.remove({str(victim)!r})\nshutil.rmtree({str(vdir)!r})\n'
    r = run_sandboxed(prog, guard=guard)
    assert not r.passed and victim.read_text() == 'keep me' and (vdir / 'a.txt').exists()
    # writing next to the victim is refused as well, and the project tree is not even readable
    r = run_sandboxed(f'open({str(tmp_path / "new.txt")!r}, "w").write("x")\n', guard=guard)
    assert not r.passed and not (tmp_path / 'new.txt').exists()
    r = run_sandboxed(f'print(open({str(REPO / "settings.ini")!r}).read())\n', guard=guard)
    assert not r.passed and 'lib_name' not in r.output

@pytest.mark.parametrize('guard', GUARD)
def test_own_directory_is_usable(guard):
    r = run_sandboxed('open("scratch.txt", "w").write("hi")\nassert open("scratch.txt").read() == "hi"\n', guard=guard)
    assert r.passed, r.output

@pytest.mark.parametrize('guard', GUARD)
def test_socket_cannot_reach_the_host(guard):
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(5)
    port = srv.getsockname()[1]
    prog = f'import socket\ns = socket.create_connection(("127.0.0.1", {port}), timeout=2)\ns.sendall(b"leak")\n'
    r = run_sandboxed(prog, timeout=3, guard=guard)
    srv.setblocking(False)      # a completed TCP handshake would sit in the backlog even without accept()
    with pytest.raises(BlockingIOError): srv.accept()
    srv.close()
    assert not r.passed, r.output
    # sanity: the same client code outside the sandbox does connect
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(5)
    socket.create_connection(('127.0.0.1', srv.getsockname()[1]), timeout=2).close()
    srv.settimeout(2); srv.accept()[0].close(); srv.close()

def test_protection_layers_reported():
    r = run_sandboxed('pass\n')
    assert r.passed and {'netns', 'pidns', 'rlimits', 'landlock-fs', 'python-guard'} <= set(r.protections), r.protections
