"""Confine: the one boundary around generated code. Every execution of a reward program (verify, evaluate,
synthesize, training) happens in a `ProgramWorker`, a separate process that this module starts and talks to.

The worker (`cleanrl_vlmcar._worker`) is a fresh interpreter (``python -s -P``, PYTHONHASHSEED=0; not a fork of
the learner, whose memory and keys it would copy), started with an empty environment (only thread-count
variables), in its own session (Ctrl-C in the terminal does not reach it), with stderr sent to /dev/null once it has booted. Before it
reads the program it confines itself: rlimits (memory, CPU time, no new files, file size 0), no new privileges,
all capabilities dropped, Landlock with no filesystem access, and a seccomp filter refusing execve, new processes,
sockets, ptrace, cross-process memory and signals to other processes. It then reports what it applied.

What crosses the boundary:
* to the worker: pickles of trusted data (the program text, view constants, views);
* back: JSON of bounded size, checked field by field (load, walk, call), or a fixed-size binary record (step).
  Nothing the worker sends is unpickled or evaluated, and all text in it is sanitised before anyone sees it.

A reply that does not come before its deadline, a crash, or a malformed reply kills the worker (`WorkerError`);
the caller decides whether to restart it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import mmap
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfinementError, WorkerError  # noqa: F401 - raised here, defined with the other errors
from .program import RewardProgram, SharedArray, pack, pack_columns, sanitize

log = logging.getLogger(__name__)

DEFAULT_MEMORY_MB = 1024
DEFAULT_CPU_S = 3600  # the worker's CPU-time rlimit; a worker that reaches it is restarted like a crashed one
STARTUP_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 30.0
MAX_JSON_REPLY = 16 << 20
#: what the learner keeps of the worker's output before it is asked for: a reply and the queued steps' answers
MAX_BUFFERED = 2 * MAX_JSON_REPLY
#: one wait in select, at most (the loops around it check their deadlines; a huge timeout overflows select)
MAX_WAIT_S = 60.0
F_SETPIPE_SZ = 1031  # fcntl: set a pipe's capacity (Linux)
#: capacity asked for the request pipe (Linux allows unprivileged processes up to /proc/sys/fs/pipe-max-size, 1 MiB)
PIPE_BYTES = 1 << 20
MAX_TEXT = 2000
#: the memory shared with each worker for big view arrays (SharedRing), and the smallest stacked column put there
SHM_BYTES = 64 << 20
SHM_MIN_BYTES = 32 << 10
F_SEAL_FUTURE_WRITE = 0x0010  # fcntl (Linux 5.1+; not in Python's fcntl module): no new writable mappings
#: the package modules the worker runs, read once, when the learner imports this module, and handed to every
#: worker it starts: a worker restarted hours into a run executes the code the run started with, even if the
#: package on disk has been updated meanwhile (a worker that imported it from disk then spoke another protocol)
_WORKER_MODULES = ("errors", "program", "_worker")
_WORKER_SOURCES = json.dumps({m: Path(__file__).with_name(f"{m}.py").read_text() for m in _WORKER_MODULES}).encode()
_BOOT = "\n".join([
    "import json, os, struct, sys, types",
    "sys.path[:0] = [p for p in sys.argv[1].split(chr(31)) if p]",  # numpy, landlock, pyseccomp
    "def take(n):",  # exactly n bytes of the request pipe (what follows belongs to the worker's framing)
    "    data = b''",
    "    while len(data) < n:",
    "        chunk = os.read(0, n - len(data))",
    "        if not chunk:",
    "            sys.exit(1)",
    "        data += chunk",
    "    return data",
    "sources = json.loads(take(struct.unpack('<I', take(4))[0]))",
    "package = types.ModuleType('cleanrl_vlmcar')",
    "package.__path__ = []",  # no other module of the package can be imported from disk
    "sys.modules['cleanrl_vlmcar'] = package",
    f"for name in {_WORKER_MODULES!r}:",
    "    module = types.ModuleType('cleanrl_vlmcar.' + name)",
    "    module.__package__ = 'cleanrl_vlmcar'",
    "    sys.modules[module.__name__] = module",
    "    setattr(package, name, module)",
    "    exec(compile(sources[name], 'cleanrl_vlmcar/' + name + '.py', 'exec'), module.__dict__)",
    "sys.modules['cleanrl_vlmcar._worker'].main(sys.argv)",
])
#: environment variables the worker keeps (thread counts and OpenBLAS CPU settings; never keys or tokens)
_ENV_KEEP = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LD_LIBRARY_PATH")


@dataclass(frozen=True)
class Confinement:
    """What the worker applied to itself before it read the program."""

    landlock_abi: int = 0
    seccomp: bool = False
    no_new_privs: bool = False
    capabilities_dropped: bool = False
    rlimits: dict = field(default_factory=dict)

    def missing(self) -> list[str]:
        out = []
        if not self.landlock_abi:
            out.append("Landlock (no filesystem isolation)")
        if not self.seccomp:
            out.append("seccomp (no system-call filter: processes, sockets and ptrace are not refused)")
        if not self.no_new_privs:
            out.append("no_new_privs")
        return out

    def describe(self) -> str:
        parts = [f"Landlock ABI {self.landlock_abi}" if self.landlock_abi else "no Landlock",
                 "seccomp" if self.seccomp else "no seccomp",
                 "capabilities dropped" if self.capabilities_dropped else "capabilities kept"]
        r = self.rlimits
        if r:
            parts.append(f"rlimits: {r.get('memory_mb')} MB, {r.get('cpu_s')} s CPU, {r.get('nofile')} fds, "
                         "file size 0")
        return ", ".join(parts)


_warned_missing: set[tuple[str, ...]] = set()


class SharedRing:
    """Memory shared with the worker for the big arrays of vector steps (frames): the learner writes a step's
    stacked column there instead of packing and pickling it into the request pipe, and the worker copies each
    env's row out of it (each view keeps its own bytes, as before). It is a sealed memfd: the worker maps it
    read-only and can neither write to it nor shrink it (which would make the learner's writes fault) nor grow it;
    the learner never reads from it. Space is taken in order and given back at once when no request is in flight
    (every answer read: the worker has copied its rows out); a column that does not fit goes into the message.
    `create` returns None where the kernel has no sealed memfds (then every array goes through the pipe)."""

    ALIGN = 64

    def __init__(self, fd: int, size: int):
        self.fd, self.size, self.head = fd, size, 0
        self.placed = 0  # columns placed so far (for tests and benchmarks)
        self.map = mmap.mmap(fd, size)  # shared, read-write: the learner's side
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def create(cls, size: int | None = None) -> "SharedRing | None":
        size = SHM_BYTES if size is None else size
        if size <= 0:
            return None
        try:
            fd = os.memfd_create("vlmcar-views", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (OSError, AttributeError):
            return None
        try:
            os.ftruncate(fd, size)
            ring = cls(fd, size)  # mapped writable before the seal, which forbids new writable mappings
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE
                        | fcntl.F_SEAL_SEAL)
        except (OSError, ValueError):
            os.close(fd)
            return None
        return ring

    def alloc(self, dtype: np.dtype, shape: tuple) -> tuple[np.ndarray, SharedArray] | None:
        """Room for one stacked column (pack_columns' `alloc`), or None: small, or no room left."""
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes < SHM_MIN_BYTES or self.head + nbytes > self.size:
            return None
        offset = self.head
        self.head = -(-(offset + nbytes) // self.ALIGN) * self.ALIGN
        self.placed += 1
        return np.ndarray(shape, dtype, buffer=self.map, offset=offset), SharedArray(dtype.str, shape, offset)

    def release(self) -> None:
        """Every column placed so far has been read: the whole ring is free again."""
        self.head = 0


def _kill(proc: subprocess.Popen, bell=None) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr, bell):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


def _number(x: Any, lo: float = 0.0, hi: float = math.inf, integer: bool = False) -> bool:
    if isinstance(x, bool) or not isinstance(x, int if integer else (int, float)):
        return False
    return math.isfinite(x) and lo <= x <= hi


@dataclass
class WalkResult:
    """One recorded episode walked by the program in the worker (validated and sanitised)."""

    steps: list[int | None]  # step at which each sub-task completed (in order), None for never
    seconds: list[float]  # time in each sub-task's check
    calls: list[int]
    exceptions: list[int]  # per sub-task
    exception_examples: list[tuple[int, str]]
    progress_problems: list[int]
    progress_examples: list[tuple[int, str]]


class ProgramWorker:
    """A confined process running one reward program. Use as a context manager, or call `close()`.

    `memory_mb` and `cpu_s` are the worker's rlimits. With `batch_scheduling` the worker runs under Linux's
    SCHED_BATCH policy, whose wake-ups do not preempt the process running. Measured on a busy 2-core machine
    (benchmarks/hook_under_load.py, docs/reward-hook.md#cost) it won in some runs and lost in others, so it is off
    by default.

    Requests are not waited on one by one: `send_step` queues a vector step's views and returns (several may be
    queued, as in a rollout); the worker takes its requests in when the caller waits for a reply or every
    `_worker.DRAIN_S`, so a request never wakes it (see `_worker._wait`); `recv_step` reads the answers in order.
    `require_confinement=True` raises ConfinementError where the kernel lacks Landlock or
    seccomp (else a warning is logged once and the worker runs with process isolation and rlimits only). `skip` is
    for tests: confinement steps to leave out ("landlock", "seccomp"). With `shared_memory` (the default) the big
    arrays of vector steps (frames) reach the worker through a SharedRing instead of the pipe.
    """

    #: usual vector steps gathered into one request by `send_step`
    BATCH_STEPS = 8

    def __init__(self, program: RewardProgram, *, memory_mb: int = DEFAULT_MEMORY_MB, cpu_s: int = DEFAULT_CPU_S,
                 require_confinement: bool = False, skip: tuple[str, ...] = (), load_timeout_s: float = LOAD_TIMEOUT_S,
                 batch_scheduling: bool = False, shared_memory: bool = True):
        if not isinstance(program, RewardProgram):
            raise TypeError("ProgramWorker needs a checked RewardProgram (cleanrl_vlmcar.program.load_program)")
        self.program = program
        self.memory_mb, self.cpu_s = int(memory_mb), int(cpu_s)
        self.require_confinement, self.skip = require_confinement, tuple(skip)
        self.load_timeout_s = float(load_timeout_s)
        self.batch_scheduling = bool(batch_scheduling)
        self.proc: subprocess.Popen | None = None
        self.shared_memory = bool(shared_memory)
        self._shm: SharedRing | None = None
        self._shm_live = False  # the running worker has mapped the ring
        self.confinement = Confinement()
        self.starts = 0
        self._finalizer = None
        self.start()

    # ------------------------------------------------------------------------------------------------------
    # Process life
    # ------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart) the worker and load the program into it."""
        self.kill()
        paths = chr(31).join(p for p in sys.path if p and os.path.isdir(p))
        bell_r, bell_w = os.pipe()  # the doorbell: one byte when the parent waits for a reply (see _worker._wait)
        if self._shm is None and self.shared_memory:
            self._shm = SharedRing.create()
        ring = self._shm
        opts = json.dumps({"memory_mb": self.memory_mb, "cpu_s": self.cpu_s, "skip": list(self.skip),
                           "batch_scheduling": self.batch_scheduling, "doorbell": bell_r,
                           "shm": ring.fd if ring is not None else -1, "shm_bytes": ring.size if ring else 0})
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # one string hash seed for every worker: a set's order (and anything built on it) is the same in
        # verification and in training. `-s -P` are `-I` without `-E`, which would ignore this variable; the
        # environment holds nothing else a Python start reads
        env["PYTHONHASHSEED"] = "0"
        try:
            self.proc = subprocess.Popen([sys.executable, "-s", "-P", "-c", _BOOT, paths, opts],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/",
                                         start_new_session=True, close_fds=True,
                                         pass_fds=(bell_r,) if ring is None else (bell_r, ring.fd))
        finally:
            os.close(bell_r)
        self._bell = open(bell_w, "wb", buffering=0)  # closed with the process (see _kill)
        self._finalizer = weakref.finalize(self, _kill, self.proc, self._bell)
        self._r, self._w = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        self._buf = bytearray()  # bytes read from the worker and not yet consumed
        self._queue: deque = deque()  # per step request sent and not answered yet: (n, [(env, k)], timeout_s)
        self._next_subtask: dict[int, int] = {}  # per env, from the worker's last validated answer
        self._rung = True  # the doorbell was rung since the last step request
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        os.set_blocking(bell_w, False)
        try:  # room for a few hundred vector steps of requests between the worker's looks at them
            fcntl.fcntl(self._w, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass
        self.starts += 1
        stderr, self.proc.stderr = self.proc.stderr, None  # kept open when a failed start kills the worker
        try:
            self._write_all(struct.pack("<I", len(_WORKER_SOURCES)) + _WORKER_SOURCES,
                            time.monotonic() + STARTUP_TIMEOUT_S)
            ready = self._recv_json(time.monotonic() + STARTUP_TIMEOUT_S)
        except WorkerError as e:
            self.kill()
            try:  # what the worker wrote before it died (its traceback)
                err = stderr.read()[-3000:]
            except (OSError, ValueError):
                err = b""
            stderr.close()
            raise WorkerError("crash", f"the program worker did not start ({e}):\n"
                                       f"{sanitize(err.decode(errors='replace'), 3000)}") from None
        stderr.close()  # from here on the worker's stderr is /dev/null
        # the ring is used only if the worker says it mapped it
        self._shm_live = ring is not None and isinstance(ready, dict) and ready.get("shared_memory") is True
        status = ready.get("confinement") if isinstance(ready, dict) and ready.get("ready") is True else None
        if not isinstance(status, dict):
            self.kill()
            raise WorkerError("protocol", "the program worker sent a malformed greeting")
        self.confinement = Confinement(
            landlock_abi=int(status.get("landlock_abi", 0)) if _number(status.get("landlock_abi"), integer=True) else 0,
            seccomp=status.get("seccomp") is True, no_new_privs=status.get("no_new_privs") is True,
            capabilities_dropped=status.get("capabilities_dropped") is True,
            rlimits={k: v for k, v in (status.get("rlimits") or {}).items() if _number(v, integer=True)})
        missing = self.confinement.missing()
        if missing:
            if self.require_confinement:
                self.kill()
                raise ConfinementError("the operating-system confinement of reward programs is incomplete on this "
                                       "machine: missing " + "; ".join(missing) + ". Run on a Linux kernel with "
                                       "Landlock and seccomp (and the landlock and pyseccomp packages), or drop "
                                       "--require-confinement to run with process isolation and rlimits only.")
            if tuple(missing) not in _warned_missing:
                _warned_missing.add(tuple(missing))
                log.warning("reward programs run with reduced confinement on this machine: missing %s. They still run "
                            "in a separate process with rlimits. Pass --require-confinement to make this an error.",
                            "; ".join(missing))
        self._send({"op": "load", "source": self.program.source, "constants": pack(self.program.constants),
                    "name": "<program>"}, time.monotonic() + self.load_timeout_s)
        try:
            reply = self._recv_json(time.monotonic() + self.load_timeout_s)
        except WorkerError as e:
            raise WorkerError("load", f"running the program's top level failed: {e}") from None
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            error = reply.get("error") if isinstance(reply, dict) else None
            self.kill()
            raise WorkerError("load", "running the program's top level raised:\n"
                              + sanitize(error if isinstance(error, str) else "(no message)", MAX_TEXT))
        if reply.get("subtasks") != self.program.num_subtasks:
            self.kill()
            raise WorkerError("protocol", "the program worker loaded a different number of sub-tasks")

    def kill(self) -> None:
        self._queue = deque()
        self._buf = bytearray()
        self._gathered = []  # steps `send_step` gathered and did not send yet
        self._shm_live = False
        if self._shm is not None:  # what a dead worker had not read is never read
            self._shm.release()
        if self.proc is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            _kill(self.proc, self._bell)
            self.proc = None

    close = kill

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "ProgramWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------------
    # Framing
    # ------------------------------------------------------------------------------------------------------
    def _fail(self, kind: str, message: str) -> WorkerError:
        code = None
        if self.proc is not None:
            try:
                self.proc.kill()
                code = self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if kind == "crash" and code is not None:
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
                hint = {"SIGXCPU": " (CPU-time limit)", "SIGSEGV": " (a crash, e.g. from very deep nesting)",
                        "SIGSYS": " (a refused system call)"}.get(name, "")
                message += f": killed by {name}{hint}"
            elif code == 3:
                message += ": out of memory"
            else:
                message += f": exit code {code}"
        self.kill()
        return WorkerError(kind, message)

    def _send(self, obj: Any, deadline: float) -> None:
        if self.proc is None:
            raise self._fail("crash", "the program worker is not running")
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._write_all(struct.pack("<I", len(payload)) + payload, deadline)

    def _write_all(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._w, view):]  # a step's message usually fits the pipe at once
                continue
            except BlockingIOError:
                pass
            except OSError:
                raise self._fail("crash", "the program worker died") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("timeout", "the program worker stopped reading its requests")
            self._ring()  # the request pipe is full: the worker takes it in now
            readable, _, _ = select.select([self._r], [self._w], [], min(remaining, MAX_WAIT_S))
            if readable:  # take its replies in meanwhile, or a worker blocked on a full reply pipe never reads
                self._take_in()

    def _no_steps_in_flight(self) -> None:
        """Replies come in request order: a request waited for now would read a queued step's answer."""
        if self._queue:
            raise RuntimeError(f"{len(self._queue)} step request(s) in flight: read their answers (recv_step) first")

    def _ring(self) -> None:
        try:
            self._bell.write(b"\0")
        except (BlockingIOError, OSError):  # already rung (the pipe is full), or the worker has gone
            pass

    def _take_in(self) -> None:
        """Keep what the worker has written (non-blocking; a dead worker shows in the next write or read). More
        than any answer in flight can need is a worker flooding the learner's memory: a protocol failure."""
        try:
            self._buf += os.read(self._r, 1 << 20)
        except OSError:  # BlockingIOError included: nothing there yet
            pass
        if len(self._buf) > MAX_BUFFERED:
            raise self._fail("protocol", f"the program worker wrote more than {MAX_BUFFERED} bytes unasked")

    def _read(self, n: int, deadline: float) -> bytes:
        buf = self._buf
        while len(buf) < n:
            try:  # what has already arrived counts, even when the caller comes back after the deadline
                chunk = os.read(self._r, max(n - len(buf), 1 << 16))
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._fail("timeout", "the program did not answer in time") from None
                self._ring()  # the worker may be asleep with the request in its pipe
                select.select([self._r], [], [], min(remaining, MAX_WAIT_S))
                continue
            except OSError:
                chunk = b""
            if not chunk:
                raise self._fail("crash", "the program worker died")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _recv(self, deadline: float, max_len: int) -> bytes:
        (length,) = struct.unpack("<I", self._read(4, deadline))
        if length > max_len:
            raise self._fail("protocol", f"the program worker sent a reply of {length} bytes (at most {max_len})")
        return self._read(length, deadline)

    def _recv_json(self, deadline: float) -> Any:
        raw = self._recv(deadline, MAX_JSON_REPLY)
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise self._fail("protocol", "the program worker sent a malformed reply") from None

    # ------------------------------------------------------------------------------------------------------
    # Requests
    # ------------------------------------------------------------------------------------------------------
    def walk(self, views: list, progress: bool = False, timeout_s: float = 60.0) -> WalkResult:
        """Walk one recorded episode (`views[0]` the reset view) with the hook's in-order rule, verification's
        accounting: exceptions surface (counted, first tracebacks kept) instead of being silently False."""
        self._no_steps_in_flight()
        began = time.monotonic()
        deadline = began + timeout_s
        self._send({"op": "walk", "views": [pack(v) for v in views], "progress": bool(progress)}, deadline)
        reply = self._recv_json(deadline)
        try:  # the check times it reports cannot exceed the walk's wall time, measured here
            return _walk_result(reply, self.program.num_subtasks, len(views), time.monotonic() - began)
        except (ValueError, TypeError, KeyError):
            raise self._fail("protocol", "the program worker sent an invalid walk result") from None

    def step(self, items: list[tuple[int, int | None, Any, Any]], n: int, progress: bool,
             timeout_s: float) -> tuple[int, list[int], list[float]]:
        """One vector step, waited for: `send_step` then `recv_step`."""
        self.send_step(items, n, progress, timeout_s)
        return self.recv_step()

    def send_step(self, items: list[tuple[int, int | None, Any, Any]], n: int, progress: bool,
                  timeout_s: float) -> None:
        """Queue one vector step and return at once; the worker checks the views while the caller goes on.
        `items`: (env index, k, view[, start view to (re)register or None]), where k is -1 when a new episode begins
        with this view, None to go on from the next sub-task the worker's previous answer gave the env, or that
        next sub-task itself (with the start view, after a restart). `timeout_s` bounds the write (a full pipe)
        and, later, `recv_step`'s wait for this step's answer.

        Up to BATCH_STEPS usual steps (no start views) go out as one request, packed and pickled together (it costs
        the learner less per step; the worker looks at its requests only every `_worker.DRAIN_S` anyway); a step
        with start views goes out on its own, after the steps before it; `recv_step` sends what is gathered."""
        if self.proc is None:
            raise self._fail("crash", "the program worker is not running")
        index = [(item[0], item[1]) for item in items]
        self._queue.append((n, index, timeout_s))
        self._rung = False
        progress = bool(progress)
        if any(len(item) > 3 and item[3] is not None for item in items):  # a resync: each view packed as it is
            self._send_gathered()
            self._send({"op": "step", "steps": [n], "progress": progress,
                        "items": [(i, k, pack(view), None if len(rest) == 0 or rest[0] is None else pack(rest[0]))
                                  for i, k, view, *rest in items]}, time.monotonic() + timeout_s)
            return
        if self._gathered and progress != self._gathered_progress:
            self._send_gathered()
        self._gathered.append((n, index, [item[2] for item in items], timeout_s))
        self._gathered_progress = progress
        if len(self._gathered) >= self.BATCH_STEPS:
            self._send_gathered()

    def _send_gathered(self) -> None:
        """Send the steps `send_step` gathered, as one request."""
        gathered, self._gathered = self._gathered, []
        if not gathered:
            return
        views = [view for _, _, step_views, _ in gathered for view in step_views]
        index = [pair for _, step_index, _, _ in gathered for pair in step_index]
        message = {"op": "step", "steps": [n for n, _, _, _ in gathered], "progress": self._gathered_progress}
        columns = pack_columns(views, self._shm.alloc if self._shm_live else None)
        if columns is not None:  # one column per view key: the cheap form of the usual steps
            message.update(index=index, columns=columns)
        else:
            message["items"] = [(i, k, pack(view), None) for (i, k), view in zip(index, views)]
        self._send(message, time.monotonic() + gathered[-1][3])

    @property
    def pending(self) -> int:
        """Step requests sent and not answered yet."""
        return len(self._queue)

    def recv_step(self) -> tuple[int, list[int], list[float]]:
        """The answer to the oldest step request `send_step` queued: (check failures, new next sub-task per env,
        progress of the new next sub-task per env), read from a fixed-size record and range-checked (a sub-task
        never un-completes; a new episode starts at 0). What has arrived counts; else the worker has the request's
        `timeout_s` from now to answer."""
        if not self._queue:
            raise RuntimeError("recv_step: no step request in flight (send_step)")
        self._send_gathered()
        if not self._rung:  # the first answer of a batch: the worker checks the rest while the caller books this one
            self._ring()
            self._rung = True
        n, index, timeout_s = self._queue.popleft()
        size = 4 + 12 * n
        raw = self._read(4 + size, time.monotonic() + timeout_s)  # the reply's length prefix and record at once
        if not self._queue and self._shm is not None:  # this answer was the last one due: all rows were read
            self._shm.release()
        if raw[:4] != struct.pack("<I", size):
            raise self._fail("protocol", "the program worker sent a reply of the wrong size")
        values = struct.unpack_from(f"<i{n}i{n}d", raw, 4)
        failures, new_k, prog = values[0], list(values[1:n + 1]), list(values[n + 1:])
        K, known = self.program.num_subtasks, self._next_subtask
        ok = failures >= 0 and min(new_k) >= 0 and max(new_k) <= K and all(0.0 <= p <= 1.0 for p in prog)
        for i, k in index:  # NaN fails the comparisons above too
            new = new_k[i]
            if k is None:
                ok = ok and new >= known.get(i, 0)  # a sub-task never un-completes
            else:
                ok = ok and (new == 0 if k == -1 else new >= k)  # a new episode starts at 0
            known[i] = new
        if not ok:
            raise self._fail("protocol", "the program worker sent values out of range")
        return failures, new_k, prog

    def call(self, kind: str, k: int, obs: Any, start: Any, timeout_s: float = 10.0) -> tuple[Any, str | None]:
        """Call subtask_{k+1} (`kind` "subtask") or progress_{k+1} ("progress") once: (value, None) or
        (None, sanitised error). A subtask's value is a bool; a progress value a float in [0, 1] or None."""
        if kind not in ("subtask", "progress") or not 0 <= k < self.program.num_subtasks:
            raise ValueError(f"no {kind}_{k + 1} in this program")
        self._no_steps_in_flight()
        deadline = time.monotonic() + timeout_s
        self._send({"op": "call", "kind": kind, "k": int(k), "obs": pack(obs), "start": pack(start)}, deadline)
        reply = self._recv_json(deadline)
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            return None, sanitize(reply["error"], MAX_TEXT)
        value = reply.get("value", "bad") if isinstance(reply, dict) else "bad"
        if kind == "subtask" and isinstance(value, bool):
            return value, None
        if kind == "progress" and (value is None or _number(value, 0.0, 1.0)):
            return value, None
        raise self._fail("protocol", "the program worker sent an invalid value")


    def first_error(self, timeout_s: float = 5.0) -> str:
        """The sanitised traceback of the first check that failed in the hook's steps ("" when none has)."""
        self._no_steps_in_flight()
        deadline = time.monotonic() + timeout_s
        self._send({"op": "first_error"}, deadline)
        reply = self._recv_json(deadline)
        error = reply.get("error") if isinstance(reply, dict) else None
        if not isinstance(error, str):
            raise self._fail("protocol", "the program worker sent an invalid reply")
        return sanitize(error, MAX_TEXT)


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} in a worker reply")


def _walk_result(d: Any, K: int, T: int, max_seconds: float = math.inf) -> WalkResult:
    """Validate a walk reply against the episode it was asked about; ValueError when anything is off."""
    if not isinstance(d, dict):
        raise ValueError("not an object")
    steps = d["steps"]
    if not isinstance(steps, list) or len(steps) != K:
        raise ValueError("steps")
    previous = 1
    for j, s in enumerate(steps):
        if s is None:
            if any(x is not None for x in steps[j:]):
                raise ValueError("steps out of order")
            break
        if not _number(s, previous, T - 1, integer=True):
            raise ValueError("step out of range")
        previous = s

    def counts(key: str, integer: bool, hi: float = math.inf) -> list:
        v = d[key]
        if not isinstance(v, list) or len(v) != K or not all(_number(x, 0, hi, integer=integer) for x in v):
            raise ValueError(key)
        return v

    def examples(key: str) -> list[tuple[int, str]]:
        v = d[key]
        if not isinstance(v, list) or len(v) > 3:
            raise ValueError(key)
        out = []
        for item in v:
            if not (isinstance(item, list) and len(item) == 2 and _number(item[0], 0, K - 1, integer=True)
                    and isinstance(item[1], str)):
                raise ValueError(key)
            out.append((item[0], sanitize(item[1], MAX_TEXT)))
        return out

    return WalkResult(steps=steps, seconds=[float(x) for x in counts("seconds", False, max_seconds)],
                      calls=counts("calls", True), exceptions=counts("exceptions", True),
                      exception_examples=examples("exception_examples"),
                      progress_problems=counts("progress_problems", True),
                      progress_examples=examples("progress_examples"))
