"""The reward-program format, its static rules and answer parsing (how programs behave in the confined worker:
test_confinement.py)."""

import math
import textwrap

import numpy as np
import pytest
from helpers_program import run

from cleanrl_vlmcar.program import ProgramError, check_source, extract_program, load_program

GOOD = textwrap.dedent(
    """
    import numpy as np
    import math
    SUBTASKS = ["reach x > 1", "reach x > 2"]

    def _x(obs):
        return obs["x"]

    def subtask_1(obs, start):
        \"\"\"A docstring may mention __dunders__ freely.\"\"\"
        return _x(obs) > 1

    def subtask_2(obs, start):
        return np.bool_(obs["x"] > 2)

    def progress_1(obs, start):
        return min(1.0, obs["x"] / 1.0)
    """
)


def prog(body: str, subtasks: str = '["do it"]') -> str:
    """A program with one sub-task whose body is `body` (indented into subtask_1)."""
    return f"SUBTASKS = {subtasks}\n\ndef subtask_1(obs, start):\n" + textwrap.indent(textwrap.dedent(body), "    ")


def test_good_program_checks_and_runs_in_the_worker():
    p = load_program(GOOD)
    assert p.subtasks == ["reach x > 1", "reach x > 2"]
    assert p.info.has_progress == [True, False]
    assert p.info.helpers == ["_x"]
    assert "2 sub-task(s)" in p.summary()
    got = run(GOOD, [("subtask", 0, {"x": 1.5}, None), ("subtask", 1, {"x": 1.5}, None),
                     ("subtask", 1, {"x": 3}, None),  # numpy bool accepted
                     ("progress", 0, {"x": 0.25}, None), ("progress", 0, {"x": 7}, None),  # clipped
                     ("progress", 1, {"x": 7}, None)])  # undefined
    assert got == [(True, None), (False, None), (True, None), (0.25, None), (1.0, None), (None, None)]


def test_windows_line_endings_are_accepted():
    assert run(GOOD.replace("\n", "\r\n"), [("subtask", 0, {"x": 2}, None)]) == [(True, None)]


def test_constants_are_in_namespace_and_read_only():
    source = prog("return obs == KEY and DIRS[0] == (1, 0)")
    assert run(source, [("subtask", 0, 5, None), ("subtask", 0, 4, None)],
               constants={"KEY": 5, "DIRS": [[1, 0]]}) == [(True, None), (False, None)]
    # a view constant may be read, not rebound: at module level or as a local
    for bad in ("KEY = 3\n" + prog("return True"), prog("KEY = 3\nreturn True")):
        with pytest.raises(ProgramError, match="'KEY' may not be rebound"):
            load_program(bad, {"KEY": 5})
    (value, error), = run(prog("OBJ['key'] = 9\nreturn True").replace("OBJ['key'] = 9", "d = OBJ\n    d.update({'k': 1})"),
                         [("subtask", 0, {}, None)], constants={"OBJ": {"key": 5}})
    assert value is None and "AttributeError" in error  # constants are frozen (mappingproxy has no update)


# ----------------------------------------------------------------------------------------------------------
# hostile or broken programs: each is rejected statically, with the line and the reason
# ----------------------------------------------------------------------------------------------------------
HOSTILE = {
    "import os": ("import os\n" + prog("return True"), "import of 'os'"),
    "import subprocess as np": ("import subprocess as np\n" + prog("return True"), "import of 'subprocess'"),
    "import numpy as math": ("import numpy as math\n" + prog("return True"), "import of 'numpy'"),
    "from-import": ("from os import system\n" + prog("return True"), "from os import"),
    "import inside function": (prog("import os\nreturn True"), "import of 'os'"),
    "__import__": (prog("return __import__('os')"), "double underscore"),
    "__builtins__": (prog("return __builtins__"), "double underscore"),
    "class-bases-subclasses chain": (prog("return ().__class__.__bases__[0].__subclasses__()"), "double underscore"),
    "builtin __self__": (prog("return abs.__self__"), "double underscore"),
    "function __globals__": (prog("f = lambda: 0\nreturn f.__globals__"), "double underscore"),
    "format-string field access": (prog("return '{0.__class__}'.format(obs)"), "double underscore"),
    "format on a variable": (prog("s = '{0.x}'\nreturn s.format(obs)"), "'.format'"),
    "format_map": (prog("return 'a'.format_map(obs)"), "'.format_map'"),
    "f-string attribute": (prog("return f'{obs.__class__}'"), "double underscore"),
    "eval": (prog("return eval('1')"), "'eval'"),
    "exec": (prog("exec('x = 1')\nreturn True"), "'exec'"),
    "compile": (prog("return compile('1', 'f', 'eval')"), "'compile'"),
    "open": (prog("return open('/etc/passwd').read()"), "'open'"),
    "getattr": (prog("return getattr(obs, 'keys')"), "'getattr'"),
    "setattr": (prog("setattr(obs, 'x', 1)\nreturn True"), "'setattr'"),
    "globals": (prog("return globals()"), "'globals'"),
    "locals": (prog("return locals()"), "'locals'"),
    "vars": (prog("return vars()"), "'vars'"),
    "input": (prog("return input()"), "'input'"),
    "breakpoint": (prog("breakpoint()\nreturn True"), "'breakpoint'"),
    "type() builtin": (prog("return type(obs)"), "'type'"),
    "while loop": (prog("while True:\n    pass\nreturn True"), "`while`"),
    "global": (prog("global X\nreturn True"), "`global`"),
    "nonlocal": ("SUBTASKS = ['a']\ndef subtask_1(obs, start):\n    x = 1\n    def g():\n        nonlocal x\n"
                 "        return x\n    return g()\n", "`nonlocal`"),
    "class definition": ("class A:\n    pass\n" + prog("return True"), "class definitions"),
    "np.load": (prog("return np.load('x.npy')"), "'.load'"),
    "np.save": (prog("np.save('x.npy', obs)\nreturn True"), "'.save'"),
    "np.savetxt": (prog("np.savetxt('x.txt', obs)\nreturn True"), "'.savetxt'"),
    "np.fromfile": (prog("return np.fromfile('/etc/passwd')"), "'.fromfile'"),
    "np.memmap": (prog("return np.memmap('x', mode='w+', shape=(1,))"), "'.memmap'"),
    "np.ctypeslib": (prog("return np.ctypeslib.load_library('libc', '.')"), "'.ctypeslib'"),
    "np.lib": (prog("return np.lib.format.open_memmap('x')"), "'.lib'"),
    "np.rec.fromfile": (prog("return np.rec.fromfile('x')"), "'.rec'"),
    "ndarray.tofile": (prog("obs.tofile('x')\nreturn True"), "'.tofile'"),
    "ndarray.dump": (prog("obs.dump('x')\nreturn True"), "'.dump'"),
    "ndarray.ctypes": (prog("return obs.ctypes.data"), "'.ctypes'"),
    "private attribute": (prog("return np._core"), "private attribute"),
    "generator frame escape": (prog("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals"), "'.gi_frame'"),
    "dunder string key": (prog("return obs['__class__']"), "double underscore"),
    "bytes literal": (prog("return b'x'"), "bytes literals"),
    "decorator": ("SUBTASKS = ['a']\n@abs\ndef subtask_1(obs, start):\n    return True\n", "decorators"),
    "with block": (prog("with obs:\n    pass\nreturn True"), "`with`"),
    "async def": ("SUBTASKS = ['a']\nasync def subtask_1(obs, start):\n    return True\n", "async"),
    "missing subtask function": (prog("return True", '["a", "b"]'), "missing function subtask_2"),
    "extra subtask function": (prog("return True") + "\ndef subtask_2(obs, start):\n    return True\n",
                               "subtask_2 has no matching entry"),
    "progress without subtask": (prog("return True") + "\ndef progress_3(obs, start):\n    return 0.0\n",
                                 "progress_3 has no matching sub-task"),
    "wrong signature": ("SUBTASKS = ['a']\ndef subtask_1(obs):\n    return True\n", "signature subtask_1(obs, start)"),
    "varargs signature": ("SUBTASKS = ['a']\ndef subtask_1(*args):\n    return True\n", "signature"),
    "default argument": ("SUBTASKS = ['a']\ndef subtask_1(obs, start=None):\n    return True\n", "signature"),
    "SUBTASKS not literal": ("SUBTASKS = list('ab')\ndef subtask_1(obs, start):\n    return True\n", "literal"),
    "SUBTASKS empty": ("SUBTASKS = []\n", "non-empty"),
    "SUBTASKS missing": ("def subtask_1(obs, start):\n    return True\n", "missing SUBTASKS"),
    "duplicate function": (prog("return True") + "\ndef subtask_1(obs, start):\n    return False\n", "defined twice"),
    "syntax error": ("SUBTASKS = ['a']\ndef subtask_1(obs, start)\n    return True\n", "syntax error"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_rejected_with_line_and_reason(name):
    source, reason = HOSTILE[name]
    with pytest.raises(ProgramError) as err:
        load_program(source, name=f"{name}.py")
    message = str(err.value)
    assert reason in message, message
    assert f"{name}.py" in message
    assert err.value.problems


def test_rejection_names_the_line():
    source = "SUBTASKS = ['a']\n\ndef subtask_1(obs, start):\n    x = 1\n    return eval('x')\n"
    with pytest.raises(ProgramError) as err:
        check_source(source, "p.py")
    assert "p.py:5:" in str(err.value)


def test_non_string_source_rejected():
    with pytest.raises(ProgramError, match="expected program source text"):
        check_source(b"SUBTASKS = ['a']")  # type: ignore[arg-type]


PURITY = {
    "module-level call": ("X = np.zeros(3)\n" + prog("return True"), "may not contain Call"),
    "module-level comprehension": ("X = [i for i in range(3)]\n" + prog("return True"), "may not contain ListComp"),
    "module-level for": ("for i in range(3):\n    pass\n" + prog("return True"), "unexpected top-level statement"),
    "module-level if": ("if True:\n    X = 1\n" + prog("return True"), "unexpected top-level statement"),
    "default argument counter": ("SUBTASKS = ['a']\ndef h(c=[0]):\n    return c\n"
                                 "def subtask_1(obs, start):\n    return h()\n", "default argument values"),
    "lambda default": (prog("f = lambda c=[0]: c\nreturn True"), "default argument values"),
    "function attribute": (prog("subtask_1.n = 1\nreturn True"), "assignment to an attribute"),
    "attribute through a local alias": (prog("m = np\nm.stack = None\nreturn True"), "assignment to an attribute"),
    "flags of a view": (prog("g = obs['a']\nf = g.flags\nreturn True"), "'.flags'"),
    "match statement": (prog("match obs:\n    case {'x': 1}:\n        return True\nreturn False"), "`match`"),
    "except as np": (prog("try:\n    return True\nexcept Exception as np:\n    return False"),
                     "'np' may not be bound"),
    "write into start": (prog("start['grid'][0, 0, 0] = 1\nreturn True"), "assignment into 'start'"),
    "write into obs": (prog("obs['x'] = 1\nreturn True"), "assignment into 'obs'"),
    "write into a constant": ("C = [0]\n" + prog("C[0] = 1\nreturn True"), "assignment into 'C'"),
    "in-place on an argument": (prog("obs += 1\nreturn True"), "in-place change of the argument 'obs'"),
    "rebinding np": (prog("np = 1\nreturn True"), "'np' may not be rebound"),
    "rebinding math at module level": ("math = 1\n" + prog("return True"), "'math' may not be rebound"),
    "SUBTASKS twice": (prog("return True") + "\nSUBTASKS = ['b']\n", "SUBTASKS is assigned twice"),
    "generator function": (prog("yield True"), "generators"),
    "np.test runner": (prog("return np.test()"), "'.test'"),
    "np.matlib": (prog("return np.matlib.warnings"), "'.matlib'"),
    "np.seterr": (prog("np.seterr(all='raise')\nreturn True"), "'.seterr'"),
    "setflags": (prog("a = obs['a']\na.setflags(write=True)\nreturn True"), "'.setflags'"),
    "tuple assignment into start": (prog("a, start['x'] = 1, 2\nreturn True"), "assignment into 'start'"),
}


@pytest.mark.parametrize("name", sorted(PURITY))
def test_purity_rules(name):
    source, reason = PURITY[name]
    with pytest.raises(ProgramError) as err:
        load_program(source)
    assert reason in str(err.value), str(err.value)


def test_numpy_mutable_module_containers_are_all_refused():
    """Writing into a module-level dict or list of numpy would keep state between calls: every one numpy exposes
    is a forbidden attribute (this fails when a numpy upgrade adds one)."""
    from cleanrl_vlmcar.program import FORBIDDEN_ATTRIBUTES
    for module in (np, np.linalg, np.fft, math):
        mutable = [n for n in dir(module) if not n.startswith("_")
                   and isinstance(getattr(module, n, None), (dict, list, set, bytearray))]
        assert set(mutable) <= FORBIDDEN_ATTRIBUTES, (module.__name__, mutable)


def test_pure_programs_still_write_into_their_own_locals():
    source = prog("m = np.zeros(3)\nm[1] = obs['x']\nd = {}\nd['k'] = 2\nm += 1\nreturn m[1] == 3 and d['k'] == 2")
    assert run(source, [("subtask", 0, {"x": 2}, None)]) == [(True, None)]


def test_runtime_import_allows_only_numpy_and_math():
    from cleanrl_vlmcar.program import restricted_import
    assert restricted_import("numpy") is np and restricted_import("math") is math
    assert restricted_import("numpy.linalg", fromlist=("norm",)) is np.linalg
    for name in ("os", "numpyx", "subprocess", "math.os"):
        with pytest.raises(ImportError, match="not allowed"):
            restricted_import(name)
    with pytest.raises(ImportError, match="not allowed"):
        restricted_import("numpy", fromlist=("load",))
    with pytest.raises(ImportError, match="not allowed"):
        restricted_import("numpy.linalg", level=1)


# ----------------------------------------------------------------------------------------------------------
# answer parsing
# ----------------------------------------------------------------------------------------------------------
def test_extract_one_block_with_prose():
    answer = "Sub-tasks: 1. do it\n\n```python\n" + prog("return True") + "```\nThat is all."
    assert "def subtask_1" in extract_program(answer)


def test_extract_rejects_answers_without_a_usable_program():
    with pytest.raises(ProgramError, match="no fenced code block"):
        extract_program("I think you should pick up the key.")
    with pytest.raises(ProgramError, match="only code blocks in text"):
        extract_program("```text\nnotes\n```")
    with pytest.raises(ProgramError, match=r"block 1: syntax error.*block 2 \(not closed with ```\): syntax error"):
        extract_program("```python\ndef f(:\n```\nand\n```python\ndef g(:\n")


def test_extract_takes_the_last_complete_block_that_parses():
    first, second = prog("return False"), prog("return True")
    answer = f"First try:\n```python\n{first}```\nOn reflection, better:\n```python\n{second}```\n"
    assert "return True" in extract_program(answer)
    # a later block that does not parse, or that is only a usage note, does not win
    broken = f"```python\n{first}```\nAnd a fix:\n```python\ndef subtask_1(obs, start:\n```"
    assert "return False" in extract_program(broken)
    usage = f"```python\n{first}```\nUse it like this:\n```python\nsubtask_1(view, view)\n```"
    assert "def subtask_1" in extract_program(usage)


def test_extract_ignores_fences_mentioned_in_prose_and_uses_an_unclosed_final_block():
    answer = ("I will write a ```python block below with the checks.\n\n```python\n" + prog("return True")
              + "```\nThe ```python fence above holds everything.")
    assert extract_program(answer).startswith("SUBTASKS")
    cut_off = "Here is the program:\n```python\n" + prog("return True")  # the model stopped before the fence
    assert extract_program(cut_off).startswith("SUBTASKS")
    with pytest.raises(ProgramError, match="not closed"):
        extract_program("```python\n" + prog("return (True"))  # unclosed and broken


def test_extract_windows_line_endings_and_bare_code():
    answer = ("```python\r\n" + prog("return True") + "```").replace("\n", "\r\n")
    assert "\r" not in extract_program(answer)
    assert extract_program(prog("return True")).startswith("SUBTASKS")


def test_extract_ignores_non_python_blocks():
    answer = "```text\nnotes\n```\n```python\n" + prog("return True") + "```"
    assert load_program(extract_program(answer)).num_subtasks == 1
