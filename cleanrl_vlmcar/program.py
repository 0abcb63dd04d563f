"""Reward programs: the format a VLM writes, the static safety check, and safe loading.

A reward program is Python source text::

    SUBTASKS = ["pick up the yellow key", "open the locked door", "pick up the purple ball"]

    def subtask_1(obs, start): ...   # True when sub-task 1 is achieved in view `obs`
    def subtask_2(obs, start): ...
    def subtask_3(obs, start): ...   # the last sub-task is the whole task

    def progress_1(obs, start): ...  # optional: float in [0, 1], dense progress inside sub-task 1

Generated code is untrusted. `check_source` rejects, before anything runs, every construct that could
reach outside the program (imports, dunder names, introspection builtins, numpy's file doors, ...), and
`load_program` executes what passes with a minimal builtins table. The first run of a program (verification)
happens in a separate process with time and memory limits (`cleanrl_vlmcar.sandbox`); a verified program
runs in-process during training, where `RewardProgram.check` turns any failure into False and counts it.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import math
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# ----------------------------------------------------------------------------------------------------------
# The rules
# ----------------------------------------------------------------------------------------------------------

#: imports a VLM may write out of habit; they bind the modules the program is given anyway.
ALLOWED_IMPORTS = {("numpy", "np"), ("math", "math")}

#: builtins a program may call: pure functions on numbers and containers.
SAFE_BUILTINS: dict[str, Any] = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
        "isinstance", "len", "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "slice",
        "sorted", "str", "sum", "tuple", "zip",
        "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError", "ValueError", "ZeroDivisionError",
    )
}

#: names a program may not use, even as its own variable names (they are the usual escape routes).
FORBIDDEN_NAMES = {
    "exec", "eval", "compile", "open", "getattr", "setattr", "delattr", "hasattr", "globals", "locals", "vars",
    "input", "breakpoint", "help", "dir", "type", "object", "super", "memoryview", "bytearray", "classmethod",
    "staticmethod", "property", "exit", "quit", "print", "id", "hash", "callable", "iter", "next", "format",
}

#: attribute names that open files, foreign code or interpreter internals (numpy is a way to the filesystem).
FORBIDDEN_ATTRIBUTES = {
    # numpy file and foreign-code doors
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
    "fromregex", "tofile", "dump", "dumps", "memmap", "ctypeslib", "ctypes", "lib", "DataSource", "f2py",
    "distutils", "testing", "rec", "show_config", "show_runtime", "info", "source", "lookfor", "get_include",
    "typing", "exceptions", "core", "char", "ma", "polynomial", "random", "os", "sys",
    # string formatting can read attributes: "{0.__class__}".format(x)
    "format", "format_map",
    # frames, code objects and tracebacks lead to the host's globals
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "ag_frame", "ag_code", "f_back", "f_globals",
    "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "func_globals", "mro", "im_func", "im_self",
}

SUBTASK_RE = re.compile(r"^subtask_(\d+)$")
PROGRESS_RE = re.compile(r"^progress_(\d+)$")


class ProgramError(ValueError):
    """A reward program that is malformed or unsafe. `problems` lists (line, reason) pairs."""

    def __init__(self, problems: list[tuple[int, str]], name: str = "<program>"):
        self.problems = problems
        self.name = name
        lines = [f"{name}:{line}: {reason}" if line else f"{name}: {reason}" for line, reason in problems]
        super().__init__("reward program rejected:\n  " + "\n  ".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Static check
# ----------------------------------------------------------------------------------------------------------


class _SafetyVisitor(ast.NodeVisitor):
    def __init__(self, docstrings: set[int]) -> None:
        self.problems: list[tuple[int, str]] = []
        self.docstrings = docstrings  # ids of docstring constants, which may mention dunders freely

    def _bad(self, node: ast.AST, reason: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), reason))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if (alias.name, alias.asname or alias.name) not in ALLOWED_IMPORTS:
                self._bad(node, f"import of '{alias.name}' is not allowed: only `import numpy as np` and "
                          "`import math` (both are provided already)")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._bad(node, f"`from {node.module} import ...` is not allowed: use the provided `np` and `math`")

    def visit_Name(self, node: ast.Name) -> None:
        if "__" in node.id:
            self._bad(node, f"name '{node.id}' contains a double underscore")
        elif node.id in FORBIDDEN_NAMES:
            self._bad(node, f"'{node.id}' is not available to reward programs")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if "__" in node.attr:
            self._bad(node, f"attribute '.{node.attr}' contains a double underscore")
        elif node.attr.startswith("_"):
            self._bad(node, f"private attribute '.{node.attr}' is not allowed")
        elif node.attr in FORBIDDEN_ATTRIBUTES:
            self._bad(node, f"attribute '.{node.attr}' is not allowed (file, foreign-code or interpreter access)")
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        if "__" in node.arg:
            self._bad(node, f"argument name '{node.arg}' contains a double underscore")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg and "__" in node.arg:
            self._bad(node, f"keyword '{node.arg}' contains a double underscore")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "__" in node.value and not self._docstring(node):
            self._bad(node, "string constants may not contain a double underscore")
        if isinstance(node.value, bytes):
            self._bad(node, "bytes literals are not allowed")

    def _docstring(self, node: ast.Constant) -> bool:
        return id(node) in self.docstrings

    def _forbid(reason: str):  # noqa: N805 - a small factory of visit methods
        def visit(self, node: ast.AST) -> None:
            self._bad(node, reason)
            self.generic_visit(node)
        return visit

    visit_While = _forbid("`while` loops are not allowed (use `for` over a bounded range)")
    visit_Global = _forbid("`global` is not allowed")
    visit_Nonlocal = _forbid("`nonlocal` is not allowed")
    visit_ClassDef = _forbid("class definitions are not allowed")
    visit_AsyncFunctionDef = _forbid("async functions are not allowed")
    visit_Await = _forbid("`await` is not allowed")
    visit_With = _forbid("`with` blocks are not allowed")
    visit_AsyncWith = _forbid("`with` blocks are not allowed")
    visit_AsyncFor = _forbid("async loops are not allowed")
    visit_Delete = _forbid("`del` is not allowed")
    visit_TryStar = _forbid("`except*` is not allowed")


def _docstring_ids(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


@dataclass
class ProgramInfo:
    """What the static check learnt about a program."""

    subtasks: list[str]
    has_progress: list[bool]
    helpers: list[str] = field(default_factory=list)


def check_source(source: str, name: str = "<program>") -> ProgramInfo:
    """Statically check a reward program; raise ProgramError listing every problem, with line numbers."""
    if not isinstance(source, str):
        raise ProgramError([(0, f"expected program source text, got {type(source).__name__}")], name)
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    try:
        tree = ast.parse(source, filename=name)
    except SyntaxError as e:
        raise ProgramError([(e.lineno or 0, f"syntax error: {e.msg}")], name) from None
    visitor = _SafetyVisitor(_docstring_ids(tree))
    visitor.visit(tree)
    problems = list(visitor.problems)

    subtasks: list[str] | None = None
    functions: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            if node.name in functions:
                problems.append((node.lineno, f"function '{node.name}' is defined twice"))
            functions[node.name] = node
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SUBTASKS" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, str) and s.strip() for s in value):
                problems.append((node.lineno, "SUBTASKS must be a literal, non-empty list of sub-task descriptions (strings)"))
            else:
                subtasks = [s.strip() for s in value]
        elif isinstance(node, (ast.Import, ast.Assign, ast.AnnAssign, ast.Expr, ast.If, ast.For, ast.Try, ast.Pass)):
            continue  # constants, helpers' data, docstrings; unsafe contents were caught by the visitor
        elif not isinstance(node, (ast.ImportFrom, ast.While, ast.ClassDef, ast.With, ast.Global, ast.Delete,
                                   ast.AsyncFunctionDef)):
            problems.append((node.lineno, f"unexpected top-level statement ({type(node).__name__})"))
    if subtasks is None and not any("SUBTASKS" in r for _, r in problems):
        problems.append((0, "missing SUBTASKS = [...] (the list of sub-task descriptions, in order)"))

    k = len(subtasks or [])
    found_subtasks = {int(m.group(1)): fn for n, fn in functions.items() if (m := SUBTASK_RE.match(n))}
    found_progress = {int(m.group(1)): fn for n, fn in functions.items() if (m := PROGRESS_RE.match(n))}
    if subtasks is not None:
        for i in range(1, k + 1):
            if i not in found_subtasks:
                problems.append((0, f"missing function subtask_{i}(obs, start) for sub-task {i} ({subtasks[i - 1]!r})"))
        for i, fn in sorted(found_subtasks.items()):
            if not 1 <= i <= k:
                problems.append((fn.lineno, f"subtask_{i} has no matching entry in SUBTASKS (which has {k} entries)"))
        for i, fn in sorted(found_progress.items()):
            if not 1 <= i <= k:
                problems.append((fn.lineno, f"progress_{i} has no matching sub-task (SUBTASKS has {k} entries)"))
    for n, fn in functions.items():
        if SUBTASK_RE.match(n) or PROGRESS_RE.match(n):
            a = fn.args
            if (a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults
                    or [x.arg for x in a.args] != ["obs", "start"]):
                problems.append((fn.lineno, f"{n} must have the signature {n}(obs, start)"))
        if fn.decorator_list:
            problems.append((fn.lineno, f"decorators are not allowed (on '{n}')"))
    if problems:
        raise ProgramError(sorted(set(problems)), name)
    assert subtasks is not None
    helpers = [n for n in functions if not (SUBTASK_RE.match(n) or PROGRESS_RE.match(n))]
    return ProgramInfo(subtasks=subtasks, has_progress=[i in found_progress for i in range(1, k + 1)], helpers=helpers)


# ----------------------------------------------------------------------------------------------------------
# Loading and running
# ----------------------------------------------------------------------------------------------------------


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    """The only imports a program can run: the two modules the static check allows, and numpy's own submodules.

    numpy's C code imports some of its helpers lazily through the calling frame's `__import__` (for instance
    `numpy._core._methods` the first time `arr.any()`, `arr.sum()` or `arr.max()` runs in a process), so those
    must pass, or a correct program fails depending on what ran before it. A program cannot reach this function
    itself: the static check rejects every import statement but `import numpy as np` and `import math`, and
    every name with a double underscore.
    """
    if name == "numpy" and not fromlist:
        return np
    if name == "math" and not fromlist:
        return math
    if name.startswith("numpy.") and level == 0:
        return builtins.__import__(name, globals, locals, fromlist, level)
    raise ImportError(f"import of '{name}' is not allowed in reward programs")


@dataclass
class CheckStats:
    """Failures of check functions at run time: counted, the first few kept with a short traceback."""

    errors: int = 0
    non_bool: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.errors + self.non_bool


class RewardProgram:
    """A checked and loaded reward program. `check(k, obs, start)` never raises."""

    MAX_EXAMPLES = 5

    def __init__(self, source: str, constants: dict[str, Any] | None = None, name: str = "<program>"):
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        self.source = source
        self.name = name
        self.info = check_source(source, name)
        self.subtasks = self.info.subtasks
        self.num_subtasks = len(self.subtasks)
        # register the source so that tracebacks show the program's lines
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        program_builtins = dict(SAFE_BUILTINS)
        program_builtins["__import__"] = _restricted_import
        namespace: dict[str, Any] = {"__builtins__": program_builtins, "__name__": "reward_program",
                                     "np": np, "math": math}
        namespace.update(constants or {})
        try:
            exec(compile(source, name, "exec"), namespace)  # noqa: S102 - checked above, minimal builtins
        except Exception as e:  # module-level code failed
            raise ProgramError([(_error_line(e, name), f"running the program's top level raised {type(e).__name__}: {e}")],
                               name) from None
        self._subtask_fns: list[Callable] = [namespace[f"subtask_{i}"] for i in range(1, self.num_subtasks + 1)]
        self._progress_fns: list[Callable | None] = [namespace.get(f"progress_{i}") for i in range(1, self.num_subtasks + 1)]
        self.stats = CheckStats()

    @property
    def has_progress(self) -> bool:
        return any(fn is not None for fn in self._progress_fns)

    def check(self, k: int, obs: Any, start: Any) -> bool:
        """Run subtask_{k+1} (0-based k); any exception, non-bool or NaN result counts as a failure and gives False."""
        try:
            result = self._subtask_fns[k](obs, start)
        except Exception as e:  # noqa: BLE001 - generated code may raise anything
            self._record(f"subtask_{k + 1} raised {type(e).__name__}: {e}", e, errors=True)
            return False
        if result is True or result is False:
            return result
        if isinstance(result, np.bool_):
            return bool(result)
        self._record(f"subtask_{k + 1} returned {type(result).__name__} {result!r:.60}, not a bool", None, errors=False)
        return False

    def check_raw(self, k: int, obs: Any, start: Any) -> bool:
        """Like `check` but lets exceptions and non-bool results surface (used by verification)."""
        result = self._subtask_fns[k](obs, start)
        if result is True or result is False:
            return result
        if isinstance(result, np.bool_):
            return bool(result)
        raise TypeError(f"subtask_{k + 1} returned {type(result).__name__} {result!r:.60}, not a bool")

    def progress_raw(self, k: int, obs: Any, start: Any) -> float | None:
        """progress_{k+1}'s value, clamped to [0, 1] as in `progress`; None when it is not defined. Exceptions
        surface, and a result that is not a finite number raises ValueError (used by verification)."""
        fn = self._progress_fns[k]
        return None if fn is None else _progress_value(k, fn(obs, start))

    def progress(self, k: int, obs: Any, start: Any) -> float:
        """Dense progress in [0, 1] inside sub-task k (0-based), clamped; 0.0 when undefined or failing."""
        fn = self._progress_fns[k]
        if fn is None:
            return 0.0
        try:
            result = fn(obs, start)
        except Exception as e:  # noqa: BLE001
            self._record(f"progress_{k + 1} raised {type(e).__name__}: {e}", e, errors=True)
            return 0.0
        try:
            return _progress_value(k, result)
        except ValueError as e:
            self._record(str(e), None, errors=False)
            return 0.0

    def _record(self, message: str, exc: BaseException | None, errors: bool) -> None:
        if errors:
            self.stats.errors += 1
        else:
            self.stats.non_bool += 1
        if len(self.stats.examples) < self.MAX_EXAMPLES:
            if exc is not None:
                message += "\n" + short_traceback(exc, self.name)
            self.stats.examples.append(message)

    def summary(self) -> str:
        lines = [f"{self.num_subtasks} sub-task(s):"]
        for i, (s, p) in enumerate(zip(self.subtasks, self.info.has_progress), 1):
            lines.append(f"  {i}. {s}" + ("  [progress_%d]" % i if p else ""))
        if self.info.helpers:
            lines.append("helpers: " + ", ".join(self.info.helpers))
        return "\n".join(lines)


def _progress_value(k: int, result: Any) -> float:
    """A progress_k result as a float clamped to [0, 1]; ValueError unless it is one finite real number (a Python
    or numpy scalar or a 0-d array; bools are not numbers here)."""
    arr = np.asarray(result) if not isinstance(result, float) else None
    if arr is not None and (arr.ndim != 0 or arr.dtype.kind not in "iuf"):
        raise ValueError(f"progress_{k + 1} returned {type(result).__name__} {result!r:.60}, not a number")
    value = float(result)
    if not math.isfinite(value):
        raise ValueError(f"progress_{k + 1} returned {value}, not a finite number")
    return min(1.0, max(0.0, value))


def _error_line(exc: BaseException, name: str) -> int:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == name:
            return frame.lineno or 0
    return 0


def short_traceback(exc: BaseException, name: str = "<program>", limit: int = 3) -> str:
    """The last few frames of a traceback that lie inside the program, for reports a VLM can read."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name][-limit:]
    out = [f"  line {f.lineno}, in {f.name}: {f.line}" for f in frames]
    return "\n".join(out + [f"  {type(exc).__name__}: {exc}"])


def load_program(source: str, constants: dict[str, Any] | None = None, name: str = "<program>") -> RewardProgram:
    """Check and load a reward program in this process (for verified programs)."""
    return RewardProgram(source, constants=constants, name=name)


def extract_program(answer: str) -> str:
    """Take the Python program out of a VLM's answer: exactly one fenced code block (or the whole answer when it
    is plain code). Raises ProgramError with a message a VLM can act on."""
    text = answer.replace("\r\n", "\n").replace("\r", "\n")
    blocks = re.findall(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", text, flags=re.S)
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3", "")]
    if len(python_blocks) == 1:
        return python_blocks[0].strip("\n") + "\n"
    if len(python_blocks) > 1:
        raise ProgramError([(0, f"the answer has {len(python_blocks)} Python code blocks; answer with exactly one "
                                "fenced ```python block holding the whole program")], "<answer>")
    if "```" not in text and "def subtask_1" in text:
        return text.strip("\n") + "\n"
    raise ProgramError([(0, "the answer has no ```python code block; answer with exactly one fenced ```python block "
                            "holding the whole program")], "<answer>")
