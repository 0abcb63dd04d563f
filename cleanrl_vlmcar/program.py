"""Reward programs: the format a VLM writes, the static rules it must follow, and the in-order progress rule.

A reward program is Python source text::

    SUBTASKS = ["pick up the yellow key", "open the locked door", "pick up the purple ball"]

    def subtask_1(obs, start): ...   # True when sub-task 1 is achieved in view `obs`
    def subtask_2(obs, start): ...
    def subtask_3(obs, start): ...   # the last sub-task is the whole task

    def progress_1(obs, start): ...  # optional: float in [0, 1], dense progress inside sub-task 1

Generated code is untrusted. This module never runs it: `check_source` only parses it and applies rules (safety
rules that close the usual escape routes, and purity rules so that a program computes the same answer for the
same view in verification and in training). Programs run only in the confined worker (`cleanrl_vlmcar.confine`),
a separate process behind Landlock, seccomp and rlimits; the rules here are a first filter, not the boundary.
"""

from __future__ import annotations

import ast
import builtins
import math
import re
import traceback
import unicodedata
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Callable, Iterable

import numpy as np

from .errors import NoProgramError

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

#: attribute names that open files, foreign code or interpreter internals, or change process-wide state
FORBIDDEN_ATTRIBUTES = {
    # numpy file and foreign-code doors
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
    "fromregex", "tofile", "dump", "dumps", "memmap", "ctypeslib", "ctypes", "lib", "DataSource", "f2py",
    "distutils", "testing", "rec", "show_config", "show_runtime", "info", "source", "lookfor", "get_include",
    "typing", "exceptions", "core", "char", "ma", "polynomial", "random", "os", "sys", "test", "matlib",
    "warnings",
    # process-wide state: a program must answer the same on every call (purity), and views stay read-only
    "seterr", "seterrcall", "setbufsize", "set_printoptions", "set_string_function", "setflags", "flags",
    # numpy's module-level mutable containers (writing into one would keep state between calls)
    "sctypeDict", "typecodes",
    # uninitialised memory: numpy hands back the block an earlier call wrote, a counter across calls
    "empty", "empty_like", "recarray", "chararray",
    # the clock (a time bomb passes verification and fires in training) and other state read from outside
    "datetime64", "timedelta64", "datetime_as_string", "datetime_data", "busday_count", "busday_offset",
    "is_busday", "busdaycalendar", "printoptions", "get_printoptions", "getbufsize", "geterr", "geterrcall",
    "gen",
    # string formatting can read attributes: "{0.__class__}".format(x)
    "format", "format_map",
    # frames, code objects and tracebacks lead to the host's globals
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "ag_frame", "ag_code", "f_back", "f_globals",
    "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "func_globals", "mro", "im_func", "im_self",
}

#: `np.ndarray` may only be the class in `isinstance(x, np.ndarray)`: called, it returns uninitialised memory
ISINSTANCE_ONLY = {"ndarray"}
#: string constants that make numpy read the clock ("now", "today") or name a datetime dtype ("M8[s]", "m8")
CLOCK_STRING = re.compile(r"^\s*(now|today)\s*$|^[<>=|]?[Mm]8?(\[\w*\])?$|datetime|timedelta", re.IGNORECASE)

#: names that always mean what the worker binds: never rebound by a program
RESERVED_NAMES = {"np", "math", "SUBTASKS"}

MAX_SOURCE_CHARS = 100_000
MAX_AST_NODES = 50_000
MAX_SUBTASK_CHARS = 200

SUBTASK_RE = re.compile(r"^subtask_(\d+)$")
PROGRESS_RE = re.compile(r"^progress_(\d+)$")


# ----------------------------------------------------------------------------------------------------------
# Text that came from a model or a program, on its way to a terminal, a report or a VLM
# ----------------------------------------------------------------------------------------------------------
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")


_DROP = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, format, surrogates, private, unassigned, line breaks
_SPACE = "\n\t\r\u2028\u2029\x0b\x0c\x85"


def sanitize(text: Any, max_len: int = 2000, single_line: bool = False) -> str:
    """`text` without terminal escapes and control or format characters (newlines and tabs are kept unless
    `single_line`), capped at `max_len` characters."""
    text = _ESCAPES.sub("", str(text))
    keep = "" if single_line else "\n\t"
    out = "".join(ch if ch in keep or unicodedata.category(ch) not in _DROP else (" " if ch in _SPACE else "")
                  for ch in text)
    if single_line:
        out = " ".join(out.split())
    return out if len(out) <= max_len else out[: max_len - 1] + "…"


class ProgramError(NoProgramError, ValueError):
    """A reward program that is malformed or unsafe. `problems` lists (line, reason) pairs."""

    def __init__(self, problems: list[tuple[int, str]], name: str = "<program>"):
        self.problems = [(line, sanitize(reason, 500, single_line=True)) for line, reason in problems]
        self.name = name = sanitize(name, 300, single_line=True)
        lines = [f"{name}:{line}: {reason}" if line else f"{name}: {reason}" for line, reason in self.problems]
        super().__init__("reward program rejected:\n  " + "\n  ".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Static check
# ----------------------------------------------------------------------------------------------------------
def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _bound_names(fn: ast.FunctionDef | ast.Lambda) -> set[str]:
    """Names a function binds by assignment in its own body (its locals, not its parameters)."""
    names: set[str] = set()
    stack = list(fn.body) if isinstance(fn, ast.FunctionDef) else [fn.body]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef)):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
            continue  # a nested function's locals are its own
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        stack.extend(ast.iter_child_nodes(node))
    return names


class _SafetyVisitor(ast.NodeVisitor):
    def __init__(self, docstrings: set[int], reserved: set[str]) -> None:
        self.problems: list[tuple[int, str]] = []
        self.docstrings = docstrings  # ids of docstring constants, which may mention dunders freely
        self.reserved = reserved
        self.scopes: list[tuple[set[str], set[str]]] = []  # (locals, parameters) of the enclosing functions
        self.isinstance_classes: set[int] = set()  # ids of the class expressions of isinstance calls

    def _bad(self, node: ast.AST, reason: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), reason))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if (alias.name, alias.asname or alias.name) not in ALLOWED_IMPORTS:
                self._bad(node, f"import of '{alias.name}' is not allowed: only `import numpy as np` and "
                          "`import math` (both are provided already)")
        if self.scopes:
            self._bad(node, "imports belong at the top of the program")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._bad(node, f"`from {node.module} import ...` is not allowed: use the provided `np` and `math`")

    def visit_Name(self, node: ast.Name) -> None:
        if "__" in node.id:
            self._bad(node, f"name '{node.id}' contains a double underscore")
        elif node.id in FORBIDDEN_NAMES:
            self._bad(node, f"'{node.id}' is not available to reward programs")
        elif isinstance(node.ctx, (ast.Store, ast.Del)) and node.id in self.reserved and self.scopes:
            self._bad(node, f"'{node.id}' may not be rebound (it is provided by the view or the worker)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if "__" in node.attr:
            self._bad(node, f"attribute '.{node.attr}' contains a double underscore")
        elif node.attr.startswith("_"):
            self._bad(node, f"private attribute '.{node.attr}' is not allowed")
        elif node.attr in FORBIDDEN_ATTRIBUTES:
            self._bad(node, f"attribute '.{node.attr}' is not allowed (file, foreign-code, interpreter, clock or "
                      "process-wide state, or uninitialised memory)")
        elif node.attr in ISINSTANCE_ONLY and id(node) not in self.isinstance_classes:
            self._bad(node, f"'.{node.attr}' may only be used as the class in isinstance(x, np.{node.attr})")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "isinstance" and len(node.args) == 2:
            classes = node.args[1]
            for c in classes.elts if isinstance(classes, ast.Tuple) else [classes]:
                self.isinstance_classes.add(id(c))
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        if "__" in node.arg:
            self._bad(node, f"argument name '{node.arg}' contains a double underscore")
        elif node.arg in self.reserved:
            self._bad(node, f"'{node.arg}' may not be used as an argument name (it is provided by the view)")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg and "__" in node.arg:
            self._bad(node, f"keyword '{node.arg}' contains a double underscore")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "__" in node.value and id(node) not in self.docstrings:
            self._bad(node, "string constants may not contain a double underscore")
        if isinstance(node.value, str) and id(node) not in self.docstrings and CLOCK_STRING.search(node.value):
            self._bad(node, f"the string {node.value[:40]!r} could make numpy read the clock or build a datetime: "
                      "a program must answer the same on every call")
        if isinstance(node.value, bytes):
            self._bad(node, "bytes literals are not allowed")

    def _function(self, node: ast.FunctionDef | ast.Lambda) -> None:
        a = node.args
        if a.defaults or any(d is not None for d in a.kw_defaults):
            self._bad(node, "default argument values are not allowed (they would keep state between calls)")
        if isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                self._bad(node, f"decorators are not allowed (on '{node.name}')")
            if node.name in self.reserved or node.name in FORBIDDEN_NAMES or "__" in node.name:
                self._bad(node, f"a function may not be named '{node.name}'")
        params = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        params |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        self.scopes.append((_bound_names(node), params))
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = _function
    visit_Lambda = _function

    def _store_target(self, target: ast.AST, node: ast.AST) -> None:
        """Only a function's own locals may be changed in place, and only by item assignment: an attribute can be
        set on shared objects (a function, a module) and keep state between calls."""
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._store_target(t, node)
            return
        if isinstance(target, ast.Starred):
            target = target.value
        if any(isinstance(n, ast.Attribute) for n in ast.walk(target)) and not isinstance(target, ast.Name):
            self._bad(node, "assignment to an attribute is not allowed (it could keep state between calls)")
            return
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            root = _root_name(target)
            owned = self.scopes and root is not None and root in self.scopes[-1][0] and root not in self.scopes[-1][1]
            if not owned:
                self._bad(node, f"assignment into '{root or ast.unparse(target)[:40]}' is not allowed: only a "
                          "function's own local variables may be changed in place (views, arguments and "
                          "module-level constants are read-only)")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._store_target(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._store_target(node.target, node)
        if isinstance(node.target, ast.Name) and self.scopes and node.target.id in self.scopes[-1][1]:
            self._bad(node, f"in-place change of the argument '{node.target.id}' is not allowed (views are "
                      "read-only; assign to a new local name)")
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._store_target(node.target, node)
        self.generic_visit(node)

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
    visit_Yield = _forbid("generators (`yield`) are not allowed")
    visit_YieldFrom = _forbid("generators (`yield from`) are not allowed")
    visit_With = _forbid("`with` blocks are not allowed")
    visit_AsyncWith = _forbid("`with` blocks are not allowed")
    visit_AsyncFor = _forbid("async loops are not allowed")
    visit_Delete = _forbid("`del` is not allowed")
    visit_TryStar = _forbid("`except*` is not allowed")
    # class patterns name attributes as plain strings (`case C(__globals__=g)`), out of reach of the name rules
    visit_Match = _forbid("`match` statements are not allowed (use if/elif)")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name and ("__" in node.name or node.name in self.reserved or node.name in FORBIDDEN_NAMES):
            self._bad(node, f"'{node.name}' may not be bound by `except ... as`")
        self.generic_visit(node)


#: expression nodes a module-level constant may be built from (no calls, no comprehensions, no lambdas)
_CONSTANT_NODES = (ast.Constant, ast.Name, ast.Load, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp,
                   ast.BoolOp, ast.Compare, ast.Subscript, ast.Slice, ast.IfExp, ast.Attribute, ast.operator,
                   ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context)


def _constant_problem(value: ast.AST) -> str | None:
    for node in ast.walk(value):
        if not isinstance(node, _CONSTANT_NODES):
            return f"a module-level value may not contain {type(node).__name__} (only literals, the view's " \
                   "constants and arithmetic on them; compute anything else inside a function)"
        if isinstance(node, ast.Attribute) and _root_name(node) not in ("np", "math"):
            return "a module-level value may only read attributes of np and math (e.g. np.pi)"
    return None


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
    """What the static check learnt about a program (sub-task texts sanitised: one line, capped)."""

    subtasks: list[str]
    has_progress: list[bool]
    helpers: list[str] = field(default_factory=list)


def _parse(source: Any, name: str) -> ast.Module:
    if not isinstance(source, str):
        raise ProgramError([(0, f"expected program source text, got {type(source).__name__}")], name)
    if len(source) > MAX_SOURCE_CHARS:
        raise ProgramError([(0, f"the program is {len(source)} characters long; at most {MAX_SOURCE_CHARS} are "
                                "allowed")], name)
    try:
        tree = ast.parse(source, filename="<program>")
    except SyntaxError as e:
        raise ProgramError([(e.lineno or 0, f"syntax error: {e.msg}")], name) from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ProgramError([(0, f"the program could not be parsed ({type(e).__name__}): it is nested too "
                                "deeply or too large")], name) from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_AST_NODES:
        raise ProgramError([(0, f"the program has {count} syntax nodes; at most {MAX_AST_NODES} are allowed")], name)
    return tree


def check_source(source: str, name: str = "<program>", reserved: Iterable[str] = ()) -> ProgramInfo:
    """Statically check a reward program; raise ProgramError listing every problem, with line numbers. Parses
    only: nothing of the program runs. `reserved`: the view's constant names, which the program may read but
    not rebind."""
    if isinstance(source, str):
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    tree = _parse(source, name)
    reserved = RESERVED_NAMES | set(reserved)
    visitor = _SafetyVisitor(_docstring_ids(tree), reserved)
    try:
        visitor.visit(tree)
    except RecursionError:
        raise ProgramError([(0, "the program is nested too deeply to check")], name) from None
    problems = list(visitor.problems)

    subtasks: list[str] | None = None
    functions: dict[str, ast.FunctionDef] = {}
    constants: set[str] = set()
    for i, node in enumerate(tree.body):
        if isinstance(node, ast.FunctionDef):
            if node.name in functions:
                problems.append((node.lineno, f"function '{node.name}' is defined twice"))
            functions[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                problems.append((node.lineno, "module-level assignments bind exactly one name (`NAME = value`)"))
                continue
            target = targets[0].id
            if target == "SUBTASKS":
                if subtasks is not None:
                    problems.append((node.lineno, "SUBTASKS is assigned twice"))
                try:
                    value = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    value = None
                if not isinstance(value, (list, tuple)) or not value or not all(isinstance(s, str) and s.strip()
                                                                                for s in value):
                    problems.append((node.lineno, "SUBTASKS must be a literal, non-empty list of sub-task "
                                                  "descriptions (strings)"))
                else:
                    subtasks = [sanitize(s, MAX_SUBTASK_CHARS, single_line=True) for s in value]
                continue
            if target in reserved:
                problems.append((node.lineno, f"'{target}' may not be rebound (it is provided by the view or the "
                                              "worker)"))
            elif target in constants or target in functions:
                problems.append((node.lineno, f"'{target}' is bound twice at module level"))
            constants.add(target)
            reason = _constant_problem(node.value)
            if reason:
                problems.append((node.lineno, reason))
        elif isinstance(node, ast.Import):
            continue  # checked by the visitor
        elif i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            continue  # the module docstring
        elif not isinstance(node, (ast.ImportFrom, ast.While, ast.ClassDef, ast.With, ast.Global, ast.Delete,
                                   ast.AsyncFunctionDef)):  # those have their own message already
            problems.append((node.lineno, f"unexpected top-level statement ({type(node).__name__}): module level "
                                          "may only bind SUBTASKS, constants and functions"))
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
    if problems:
        raise ProgramError(sorted(set(problems)), name)
    assert subtasks is not None
    helpers = [n for n in functions if not (SUBTASK_RE.match(n) or PROGRESS_RE.match(n))]
    return ProgramInfo(subtasks=subtasks, has_progress=[i in found_progress for i in range(1, k + 1)], helpers=helpers)


# ----------------------------------------------------------------------------------------------------------
# The checked program (trusted side: text and facts, never executed here)
# ----------------------------------------------------------------------------------------------------------
class RewardProgram:
    """A statically checked reward program with the view constants it runs with. It is never executed in this
    process: `worker()` starts the confined worker that runs it (see `cleanrl_vlmcar.confine`)."""

    def __init__(self, source: str, constants: dict[str, Any] | None = None, name: str = "<program>"):
        if isinstance(source, str):
            source = source.replace("\r\n", "\n").replace("\r", "\n")
        self.constants = dict(constants or {})
        self.name = name
        self.info = check_source(source, name, reserved=self.constants)
        self.source = source
        self.subtasks = self.info.subtasks
        self.num_subtasks = len(self.subtasks)
        self.cache_path = None  # the reward-cache entry it came from, if any
        self.us_per_check: float | None = None  # the slowest check's cost measured by verification, if known

    @property
    def has_progress(self) -> bool:
        return any(self.info.has_progress)

    def summary(self) -> str:
        lines = [f"{self.num_subtasks} sub-task(s):"]
        for i, (s, p) in enumerate(zip(self.subtasks, self.info.has_progress), 1):
            lines.append(f"  {i}. {s}" + ("  [progress_%d]" % i if p else ""))
        if self.info.helpers:
            lines.append("helpers: " + ", ".join(self.info.helpers))
        return "\n".join(lines)


def load_program(source: str, constants: dict[str, Any] | None = None, name: str = "<program>") -> RewardProgram:
    """Check a reward program (statically; it runs only in the confined worker)."""
    return RewardProgram(source, constants=constants, name=name)


# ----------------------------------------------------------------------------------------------------------
# The in-order progress rule (shared by the hook, verification and evaluation; runs inside the worker)
# ----------------------------------------------------------------------------------------------------------
def advance(check: Callable[[int, Any, Any], bool], k: int, num_subtasks: int, obs: Any, start: Any) -> int:
    """From next sub-task `k` (0-based), complete sub-tasks in order while their checks hold on `obs`; return the
    new next index (several may complete in one step)."""
    while k < num_subtasks and check(k, obs, start):
        k += 1
    return k


def completion_steps(check: Callable[[int, Any, Any], bool], num_subtasks: int, views: list) -> list[int | None]:
    """Walk one recorded episode (`views[0]` the reset view, `views[t]` the view after step t) with `advance`:
    the step at which each sub-task was completed, None for those never completed."""
    steps: list[int | None] = [None] * num_subtasks
    k = 0
    for t in range(1, len(views)):
        if k >= num_subtasks:
            break
        new_k = advance(check, k, num_subtasks, views[t], views[0])
        steps[k:new_k] = [t] * (new_k - k)
        k = new_k
    return steps


class PackedArray:
    """A numpy array on its way to the worker: its raw bytes (cheaper to pickle than the array, and unpacked there as
    a read-only array over immutable bytes)."""

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: str, shape: tuple, data: bytes):
        self.dtype, self.shape, self.data = dtype, shape, data

    def __reduce__(self):  # a plain constructor call: pickles faster than a NamedTuple
        return PackedArray, (self.dtype, self.shape, self.data)


class SharedArray:
    """A stacked array column of a vector step that the learner wrote into the worker's shared-memory ring
    (confine.SharedRing) instead of the message: its dtype, shape and byte offset in the ring."""

    __slots__ = ("dtype", "shape", "offset")

    def __init__(self, dtype: str, shape: tuple, offset: int):
        self.dtype, self.shape, self.offset = dtype, shape, offset

    def __reduce__(self):
        return SharedArray, (self.dtype, self.shape, self.offset)


_PLAIN = frozenset({int, float, str, bool, type(None)})


def pack(value: Any) -> Any:
    """A view (or constants) with every numpy array replaced by a PackedArray."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is dict:
        return {k: v if type(v) in _PLAIN else pack(v) for k, v in value.items()}
    if t is np.ndarray:
        if value.dtype.hasobject:
            raise TypeError("views may not hold object arrays")
        return PackedArray(value.dtype.str, value.shape, value.tobytes())
    if t is list or t is tuple:
        return value if t is tuple and all(type(v) in _PLAIN for v in value) else t(pack(v) for v in value)
    return value


def pack_columns(views: list, alloc: Callable[[np.dtype, tuple], tuple | None] | None = None) -> tuple | None:
    """A vector step's views as columns, when they are dicts with the same keys and each array key has one shape and
    dtype across them (the usual case: one env id): (keys, {key: PackedArray of the stacked arrays, or the list of
    values}). About a third of the cost of packing and pickling each view; None when the views do not fit.
    `alloc(dtype, shape)`, when given, may place a stacked array elsewhere (the worker's shared memory): it returns
    (an empty array of that shape to fill, the column to send in its place), or None to send the bytes."""
    first = views[0] if views else None
    if type(first) is not dict:
        return None
    keys = tuple(first)
    for view in views:  # same keys in the same order (a program may iterate over its view)
        if type(view) is not dict or tuple(view) != keys:
            return None
    columns = {}
    plain = _PLAIN.__contains__
    for key in keys:
        values = [view[key] for view in views]
        head = values[0]
        if type(head) is np.ndarray:
            shape, dtype = head.shape, head.dtype
            if dtype.hasobject:
                raise TypeError("views may not hold object arrays")
            for x in values:  # (`is` first: the arrays of one view usually share their dtype object)
                if type(x) is not np.ndarray or x.shape != shape or (x.dtype is not dtype and x.dtype != dtype):
                    return None
            placed = None if alloc is None else alloc(dtype, (len(values),) + shape)
            if placed is not None:
                out, columns[key] = placed
                for j, x in enumerate(values):
                    out[j] = x
            else:
                columns[key] = PackedArray(dtype.str, (len(values),) + shape, b"".join([x.tobytes() for x in values]))
        else:  # plain values and tuples of them as they are (the common case, checked in bulk), the rest packed
            kinds = set(map(type, values))
            if kinds <= _PLAIN or kinds == {tuple} and set(map(type, chain.from_iterable(values))) <= _PLAIN:
                columns[key] = values
            else:
                columns[key] = [v if plain(type(v)) or (type(v) is tuple and all(map(plain, map(type, v))))
                                else pack(v) for v in values]
    return keys, columns


def progress_value(k: int, result: Any) -> float:
    """A progress_k result as a float clamped to [0, 1]; ValueError unless it is one finite real number (a Python
    or numpy scalar or a 0-d array; bools are not numbers here)."""
    arr = np.asarray(result) if not isinstance(result, float) else None
    if arr is not None and (arr.ndim != 0 or arr.dtype.kind not in "iuf"):
        raise ValueError(f"progress_{k + 1} returned {type(result).__name__}, not a number")
    value = float(result)
    if not math.isfinite(value):
        raise ValueError(f"progress_{k + 1} returned {value}, not a finite number")
    return min(1.0, max(0.0, value))


def restricted_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
    """The only imports a program can run (in the worker): the two modules the static check allows, and numpy's
    own submodules, which numpy's C code imports lazily through the calling frame's `__import__` (the worker
    imports those before it confines itself; a file-backed import after that is refused by Landlock)."""
    if name == "numpy" and not fromlist:
        return np
    if name == "math" and not fromlist:
        return math
    if name.startswith("numpy.") and level == 0:
        return builtins.__import__(name, globals, locals, fromlist, level)
    raise ImportError(f"import of '{name}' is not allowed in reward programs")


def short_traceback(exc: BaseException, name: str = "<program>", limit: int = 3) -> str:
    """The last few frames of a traceback that lie inside the program, for reports a VLM can read."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name][-limit:]
    out = [f"  line {f.lineno}, in {f.name}: {sanitize(f.line, 300, single_line=True)}" for f in frames]
    return "\n".join(out + [f"  {type(exc).__name__}: {sanitize(exc, 500, single_line=True)}"])


_PYTHON_LANGS = ("python", "py", "python3", "")


def _fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, closed) of each fenced block. A fence is a line that starts with ``` (after indentation);
    a ```python written inside a line of prose is not one."""
    blocks, lang, body, inside = [], "", [], False
    for line in text.split("\n"):
        stripped = line.strip()
        if not inside and stripped.startswith("```"):
            inside, body = True, []
            rest = stripped[3:].strip()
            lang = rest.split()[0].lower() if rest else ""
        elif inside and stripped.endswith("```"):  # "```" alone, or closing the last code line
            body.append(line[: line.rindex("```")].rstrip("`"))
            blocks.append((lang, "\n".join(body), True))
            inside = False
        elif inside:
            body.append(line)
    if inside:
        blocks.append((lang, "\n".join(body), False))
    return blocks


def _parse_problem(code: str) -> str | None:
    try:
        _parse(code, "<answer>")
    except ProgramError as e:
        return e.problems[0][1] if e.problems else "does not parse"
    return None


def extract_program(answer: str) -> str:
    """Take the Python program out of a VLM's answer: the last complete fenced Python block that parses and defines
    subtask_1 (else the last one that parses); an unclosed final block when it parses; the whole answer when it is
    plain code. Raises ProgramError saying what was found, in words a VLM can act on."""
    if not isinstance(answer, str):
        raise ProgramError([(0, f"expected the answer as text, got {type(answer).__name__}")], "<answer>")
    text = answer.replace("\r\n", "\n").replace("\r", "\n")
    blocks = _fenced_blocks(text)
    python = [(body.strip("\n") + "\n", closed) for lang, body, closed in blocks if lang in _PYTHON_LANGS]
    complete = [body for body, closed in python if closed]
    parsing = [body for body in reversed(complete) if _parse_problem(body) is None]
    for body in parsing:
        if "def subtask_1" in body:
            return body
    if parsing:
        return parsing[0]
    if python and not python[-1][1] and _parse_problem(python[-1][0]) is None:
        return python[-1][0]  # the answer was cut off after a complete program
    if not blocks and "def subtask_1" in text and _parse_problem(text) is None:
        return text.strip("\n") + "\n"
    if not python:
        other = sorted({lang or "(no language)" for lang, _, _ in blocks})
        found = f"only code blocks in {', '.join(other)}" if blocks else "no fenced code block"
        raise ProgramError([(0, f"the answer has {found}; answer with one fenced ```python block holding the whole "
                                "program")], "<answer>")
    details = []
    for i, (body, closed) in enumerate(python, 1):
        problem = _parse_problem(body)
        details.append(f"block {i}{'' if closed else ' (not closed with ```)'}: {problem or 'parses'}")
    raise ProgramError([(0, f"the answer has {len(python)} Python block(s) and none is a usable program ("
                            + "; ".join(details) + "); answer with one complete fenced ```python block holding the "
                            "whole program")], "<answer>")
