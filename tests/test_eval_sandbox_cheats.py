"""HumanEval scoring must not count cheats as passes: a completion that exits early (status 0), fakes output, or
returns an object that compares equal to anything is a failure; real solutions still pass."""
import sys, textwrap
import pytest
from hybridslm.eval.sandbox import check_humaneval
from hybridslm.eval.data import load_task

pytestmark = pytest.mark.skipif(sys.platform != 'linux', reason='the sandbox uses Linux namespaces/Landlock')
PROBS = {p['task_id']: p for p in load_task('humaneval')}
BOOL, LIST = PROBS['HumanEval/0'], PROBS['HumanEval/1']   # has_close_elements -> bool, separate_paren_groups -> list

def score(prob, completion, **kw):
    return check_humaneval(prob, completion, **kw)

def body(src): return textwrap.indent(textwrap.dedent(src), '    ')

CHEATS = {   # completion of has_close_elements (asserts `candidate(...) == True` / `== False`)
    'sys.exit(0) before the asserts': '    pass\nimport sys\nsys.exit(0)\n',
    'os._exit(0) before the asserts': '    pass\nimport os\nos._exit(0)\n',
    'raise SystemExit at module level': '    pass\nraise SystemExit\n',
    'exit() at module level': '    pass\ntry:\n    exit(0)\nexcept NameError:\n    raise SystemExit(0)\n',
    'SystemExit(0) inside the function': body('raise SystemExit(0)\n'),
    'sys.exit(0) inside the function': body('import sys\nsys.exit(0)\n'),
    'os._exit(0) inside the function': body('import os\nos._exit(0)\n'),
    'always-true __eq__ object': body('''
        class Yes:
            def __eq__(self, other): return True
            def __bool__(self): return True
        return Yes()
    '''),
    'int subclass with __eq__ overridden': body('''
        class I(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        return I(1)
    '''),
    'bool-like float subclass': body('''
        class F(float):
            __eq__ = lambda self, other: True
        return F(1)
    '''),
    'replacing sys.stdout, then exit 0': '    pass\nimport io, sys\nsys.stdout = io.StringIO()\nsys.exit(0)\n',
    'printing a PASS-like line, then exit 0': body('''
        import os
        for line in ('PASS', 'passed', 'OK', 'All tests passed'): print(line, flush=True)
        os._exit(0)
    '''),
    'atexit handler + exit 0': '    pass\nimport atexit, sys\natexit.register(lambda: print("PASS"))\nsys.exit(0)\n',
    'thread that exits 0 while the test runs': body('''
        import os, threading, time
        threading.Thread(target=lambda: os._exit(0)).start()
        time.sleep(5)
        return False
    '''),
    'KeyboardInterrupt inside the function': body('raise KeyboardInterrupt\n'),
    'BaseException subclass at module level': '    pass\nclass Out(BaseException): pass\nraise Out()\n',
}

@pytest.mark.parametrize('name', list(CHEATS))
def test_cheat_is_a_failure(name):
    r = score(BOOL, CHEATS[name], timeout=3.0)
    assert not r.passed and r.status != 'passed', (name, r.status, r.output)

def test_list_subclass_with_eq_is_refused():
    comp = body('''
        class L(list):
            def __eq__(self, other): return True
        return L()
    ''')
    r = score(LIST, comp)
    assert not r.passed and 'not a plain builtin value' in r.output, r.output

def test_forged_reply_cannot_make_a_pass():
    "Writing fake replies to every open fd only feeds values to the asserts; wrong values still fail."
    comp = body('''
        import json, os
        msg = json.dumps(['ok', True]).encode()
        for fd in range(3, 64):
            try: os.write(fd, len(msg).to_bytes(4, 'big') + msg)
            except OSError: pass
        os._exit(0)
    ''')
    assert not score(BOOL, comp).passed

def test_tests_are_invisible_to_the_sandbox():
    comp = '    pass\nimport os, sys\nprint(open("prog.py").read(), sys.argv, os.read(0, 1 << 16), os.listdir("."))\n'
    r = score(BOOL, comp)
    assert not r.passed and 'def check' not in r.output and 'prog.py' in r.output, r.output

def test_real_solutions_pass_and_wrong_ones_fail():
    for prob in PROBS.values():
        r = score(prob, prob['canonical_solution'])
        assert r.passed and r.status == 'passed', (prob['task_id'], r.output)
        assert not score(prob, '    return None\n').passed, prob['task_id']

def test_solution_that_prints_and_keeps_state_passes():
    "Printing, helper functions and module-level state in the completion are fine."
    comp = textwrap.dedent('''\
            print('checking', len(numbers))
            return _helper(numbers, threshold)

        _CALLS = []
        def _helper(numbers, threshold):
            _CALLS.append(1)
            return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
    ''')
    r = score(BOOL, comp)
    assert r.passed and 'checking 6' in r.output, r.output

def test_hang_inside_the_function_times_out():
    r = score(BOOL, body('while True: pass\n'), timeout=1.5)
    assert r.status == 'timeout' and not r.passed and r.duration < 8
