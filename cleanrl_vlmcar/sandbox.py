"""Run untrusted work in a separate process with a wall-clock limit and a memory limit.

Generated programs are first run here (during verification): a hang, a memory bomb or a crash of the
interpreter costs at most the time limit and never touches the host process. The child is forked, so the
data it works on (trajectories) is shared without copying; it sends back one picklable result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import signal
import traceback
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 1024


class SandboxError(RuntimeError):
    """The isolated run did not return a result: timed out, ran out of memory, crashed or raised."""

    def __init__(self, kind: str, message: str):
        self.kind = kind  # "timeout" | "memory" | "crash" | "exception"
        super().__init__(message)


@dataclass
class _Outcome:
    ok: bool
    value: Any = None
    error: str = ""
    kind: str = ""


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(conn, fn: Callable, args: tuple, memory_mb: int, timeout_s: float) -> None:
    try:
        # the limit counts address space on top of what the forked interpreter already maps
        limit = _vm_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = int(timeout_s) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        result = _Outcome(True, fn(*args))
    except MemoryError:
        result = _Outcome(False, error=f"ran out of memory (limit {memory_mb} MB)", kind="memory")
    except BaseException as e:  # noqa: BLE001 - report everything
        result = _Outcome(False, error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}", kind="exception")
    try:
        conn.send(result)
    except MemoryError:
        conn.send(_Outcome(False, error=f"ran out of memory (limit {memory_mb} MB)", kind="memory"))
    except Exception as e:  # noqa: BLE001 - an unpicklable result
        conn.send(_Outcome(False, error=f"could not return the result: {type(e).__name__}: {e}", kind="exception"))
    finally:
        conn.close()


def run_isolated(fn: Callable, *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB) -> Any:
    """Call `fn(*args)` in a forked child process; return its result or raise SandboxError."""
    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child_conn, fn, args, memory_mb, timeout_s), daemon=True)
    proc.start()
    child_conn.close()
    try:
        if parent_conn.poll(timeout_s):
            try:
                outcome: _Outcome = parent_conn.recv()
            except EOFError:
                outcome = None
        else:
            outcome = _Outcome(False, error=f"did not finish within {timeout_s:g} s (infinite loop or too slow?)",
                               kind="timeout")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent_conn.close()
    if outcome is None:
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (CPU time limit)" if -code == signal.SIGXCPU else ""
            raise SandboxError("crash", f"the isolated process was killed by {name}{hint}: a crash, e.g. from very "
                                        "deep recursion")
        raise SandboxError("crash", f"the isolated process exited with code {code} without a result")
    if not outcome.ok:
        raise SandboxError(outcome.kind, outcome.error)
    return outcome.value
