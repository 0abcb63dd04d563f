"""The reward-program format, its static safety check, safe loading and runtime containment."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cleanrl_vlmcar.program import ProgramError, check_source, extract_program, load_program
from cleanrl_vlmcar.sandbox import SandboxError, run_isolated

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


def test_good_program_loads_and_runs():
    p = load_program(GOOD)
    assert p.subtasks == ["reach x > 1", "reach x > 2"]
    assert p.info.has_progress == [True, False]
    assert p.info.helpers == ["_x"]
    assert p.check(0, {"x": 1.5}, None) is True
    assert p.check(1, {"x": 1.5}, None) is False
    assert p.check(1, {"x": 3}, None) is True  # numpy bool accepted
    assert p.progress(0, {"x": 0.25}, None) == 0.25
    assert p.progress(0, {"x": 7}, None) == 1.0  # clipped
    assert p.progress(1, {"x": 7}, None) == 0.0  # undefined
    assert p.stats.total == 0
    assert "2 sub-task(s)" in p.summary()


def test_windows_line_endings_are_accepted():
    p = load_program(GOOD.replace("\n", "\r\n"))
    assert p.check(0, {"x": 2}, None)


def test_constants_are_in_namespace():
    p = load_program(prog("return obs == KEY"), constants={"KEY": 5})
    assert p.check(0, 5, None) and not p.check(0, 4, None)


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


def test_module_level_failure_is_a_program_error():
    with pytest.raises(ProgramError, match="ZeroDivisionError"):
        load_program("X = 1 / 0\n" + prog("return True"))


def test_minimal_builtins_at_runtime():
    # `sorted` exists, `print` does not: a name the static check allows but the builtins table lacks fails cleanly
    p = load_program(prog("return sorted([2, 1]) == [1, 2]"))
    assert p.check(0, None, None) is True
    p = load_program(prog("return bool(hex(3))"))
    assert p.check(0, None, None) is False
    assert p.stats.errors == 1 and "NameError" in p.stats.examples[0]


def test_array_methods_work_in_a_fresh_process():
    # numpy imports `numpy._core._methods` lazily, through the calling frame's __import__, the first time
    # arr.any() / arr.sum() / arr.max() ... run in a process; a program must not fail on that. A fresh interpreter
    # is needed: in this one, other tests have already warmed numpy's cache.
    code = textwrap.dedent("""
        import numpy as np
        from cleanrl_vlmcar.program import load_program
        methods = ["any", "all", "sum", "mean", "max", "min", "std", "prod", "var"]
        body = " and ".join(f"bool(a.{m}() >= 0)" for m in methods)
        p = load_program(f"SUBTASKS = ['x']\\ndef subtask_1(obs, start):\\n    a = obs['a']\\n    return {body}\\n")
        print(p.check_raw(0, {"a": np.ones(3)}, {}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_runtime_import_allows_only_numpy_and_math():
    from cleanrl_vlmcar.program import _restricted_import
    assert _restricted_import("numpy") is np and _restricted_import("math") is math
    assert _restricted_import("numpy.linalg", fromlist=("norm",)) is np.linalg
    for name in ("os", "numpyx", "subprocess", "math.os"):
        with pytest.raises(ImportError, match="not allowed"):
            _restricted_import(name)
    with pytest.raises(ImportError, match="not allowed"):
        _restricted_import("numpy", fromlist=("load",))
    with pytest.raises(ImportError, match="not allowed"):
        _restricted_import("numpy.linalg", level=1)


# ----------------------------------------------------------------------------------------------------------
# runtime failures at training time: counted, False, never raise
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,kind", [
    ("return obs['missing']", "raised KeyError"),
    ("return 1 / 0", "raised ZeroDivisionError"),
    ("return float('nan')", "not a bool"),
    ("return 1", "not a bool"),
    ("return None", "not a bool"),
    ("return np.array([True, False])", "not a bool"),
])
def test_runtime_failures_count_as_false(body, kind):
    p = load_program(prog(body))
    for _ in range(3):
        assert p.check(0, {}, {}) is False
    assert p.stats.total == 3
    assert kind in p.stats.examples[0]


def test_progress_failures_give_zero():
    p = load_program(prog("return True") + "\ndef progress_1(obs, start):\n    return float('nan')\n")
    assert p.progress(0, {}, {}) == 0.0
    assert p.stats.non_bool == 1
    p = load_program(prog("return True") + "\ndef progress_1(obs, start):\n    return obs['x']\n")
    assert p.progress(0, {}, {}) == 0.0 and p.stats.errors == 1


@pytest.mark.parametrize("value, expected", [
    ("0.25", 0.25), ("-0.5", 0.0), ("2", 1.0), ("np.float32(0.5)", 0.5), ("np.array(0.75)", 0.75),
    ("np.int64(1)", 1.0), ("'0.5'", None), ("True", None), ("None", None), ("np.array([0.5])", None),
    ("math.inf", None), ("[0.5]", None),
])
def test_progress_values_in_the_hook_and_in_verification(value, expected):
    """The hook (`progress`) and verification (`progress_raw`) accept the same values: one finite real number,
    clamped to [0, 1]. Anything else is 0.0 and counted in the hook, and an error for verification."""
    p = load_program(prog("return True") + f"\ndef progress_1(obs, start):\n    return {value}\n")
    if expected is None:
        assert p.progress(0, {}, {}) == 0.0 and p.stats.non_bool == 1
        with pytest.raises(ValueError, match="progress_1 returned"):
            p.progress_raw(0, {}, {})
    else:
        assert p.progress(0, {}, {}) == expected == p.progress_raw(0, {}, {}) and p.stats.total == 0


def test_check_raw_surfaces_errors():
    p = load_program(prog("return 2"))
    with pytest.raises(TypeError, match="not a bool"):
        p.check_raw(0, {}, {})


# ----------------------------------------------------------------------------------------------------------
# containment: programs that pass the static check but hang, bomb memory or recurse are stopped by the sandbox
# ----------------------------------------------------------------------------------------------------------
def _run_first_check(source):
    p = load_program(source)
    return p.check_raw(0, {"x": 1}, {"x": 1})


def test_sandbox_returns_result():
    assert run_isolated(_run_first_check, prog("return obs['x'] == 1"), timeout_s=20) is True


def test_sandbox_contains_infinite_loop():
    with pytest.raises(SandboxError) as err:
        run_isolated(_run_first_check, prog("for i in range(10**15):\n    pass\nreturn True"), timeout_s=2)
    assert err.value.kind == "timeout" and "2 s" in str(err.value)


def test_sandbox_contains_huge_number():
    with pytest.raises(SandboxError) as err:
        run_isolated(_run_first_check, prog("return 10 ** 10 ** 10 > 0"), timeout_s=2, memory_mb=512)
    assert err.value.kind in ("timeout", "memory")


@pytest.mark.parametrize("body", ["x = np.zeros(10**11)\nreturn True", "x = [0] * 10**10\nreturn True",
                                  "x = 'a' * 10**11\nreturn True"])
def test_sandbox_contains_memory_bomb(body):
    with pytest.raises(SandboxError) as err:
        run_isolated(_run_first_check, prog(body), timeout_s=20, memory_mb=256)
    assert err.value.kind == "memory" or "MemoryError" in str(err.value)


def test_sandbox_contains_deep_recursion():
    source = "SUBTASKS = ['a']\ndef f(n):\n    return f(n + 1)\ndef subtask_1(obs, start):\n    return f(0)\n"
    with pytest.raises(SandboxError) as err:
        run_isolated(_run_first_check, source, timeout_s=20)
    assert "RecursionError" in str(err.value)


def test_sandbox_reports_exceptions_and_crashes():
    with pytest.raises(SandboxError, match="KeyError"):
        run_isolated(_run_first_check, prog("return obs['nope']"), timeout_s=20)

    def die():
        import os
        os._exit(3)

    with pytest.raises(SandboxError, match="exited with code 3"):
        run_isolated(die, timeout_s=20)


def test_host_process_unaffected_by_sandbox_limits():
    import resource
    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(SandboxError):
        run_isolated(_run_first_check, prog("x = [0] * 10**10\nreturn True"), timeout_s=20, memory_mb=128)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    assert math.isfinite(sum(np.ones(10**6)))  # the host can still allocate


# ----------------------------------------------------------------------------------------------------------
# answer parsing
# ----------------------------------------------------------------------------------------------------------
def test_extract_one_block_with_prose():
    answer = "Sub-tasks: 1. do it\n\n```python\n" + prog("return True") + "```\nThat is all."
    assert "def subtask_1" in extract_program(answer)


def test_extract_rejects_no_block_and_two_blocks():
    with pytest.raises(ProgramError, match="no ```python code block"):
        extract_program("I think you should pick up the key.")
    with pytest.raises(ProgramError, match="2 Python code blocks"):
        extract_program("```python\nx = 1\n```\nand\n```python\ny = 2\n```")


def test_extract_windows_line_endings_and_bare_code():
    answer = ("```python\r\n" + prog("return True") + "```").replace("\n", "\r\n")
    assert "\r" not in extract_program(answer)
    assert extract_program(prog("return True")).startswith("SUBTASKS")


def test_extract_ignores_non_python_blocks():
    answer = "```text\nnotes\n```\n```python\n" + prog("return True") + "```"
    assert load_program(extract_program(answer)).num_subtasks == 1
