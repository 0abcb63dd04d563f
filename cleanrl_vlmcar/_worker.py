"""The confined worker: the only place where a reward program's code ever runs.

Started by `cleanrl_vlmcar.confine.ProgramWorker` as a fresh interpreter (``python -s -P``, empty environment, its
own session, no terminal), it imports what programs may use, warms up numpy's lazily imported parts, then confines
itself before it reads the program:

1. rlimits: address space, CPU time, open files (no new ones), file size 0, no core dumps, no new processes;
2. no new privileges, and every capability dropped (the worker may have been started by root);
3. Landlock: no filesystem access at all (no open, create, remove, execute) for the rest of its life;
4. seccomp: execve/execveat, fork/vfork/clone, sockets, ptrace, cross-process memory, signals to other processes,
   mounts, namespaces, kernel keys, BPF, io_uring and changes of rlimits are refused with EPERM.

It reports what it could apply, then serves requests on stdin/stdout. Requests are pickles from the trusted parent;
replies are either JSON (load, walk, call) or a fixed-size binary record (step). The parent never unpickles or
evaluates a reply, and treats every reply as untrusted data.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import mmap
import os
import pickle
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types
from itertools import islice

import numpy as np

from .program import (_PLAIN, SAFE_BUILTINS, PackedArray, SharedArray, advance, check_source, completion_steps, pack,
                      progress_value, restricted_import, sanitize, short_traceback)

MAX_TEXT = 2000  # longest traceback or message a reply carries


# ----------------------------------------------------------------------------------------------------------
# Framing (the parent's side is in confine.py)
# ----------------------------------------------------------------------------------------------------------
_inbox = bytearray()  # bytes the parent has sent and the worker has not parsed yet
#: the longest the worker sleeps between looks at its requests when nobody rings (seconds)
DRAIN_S = 0.01
_doorbell = -1
_shared = memoryview(b"")  # the learner's shared memory for big view arrays (confine.SharedRing), when it has one


def _wait() -> None:
    """Sleep until the parent rings the doorbell (it waits for a reply, or its request pipe is full) or DRAIN_S has
    passed. The worker never sleeps on the request pipe itself: on a virtual machine every wake-up costs the process
    that caused it tens of microseconds when idle and up to milliseconds when the cores are busy, and the training
    hook sends one request per vector step. Polling every DRAIN_S keeps up with the rollout at ~100 wake-ups/s."""
    if _doorbell < 0:
        select.select([0], [], [])
        return
    if select.select([_doorbell], [], [], DRAIN_S)[0]:
        try:
            if not os.read(_doorbell, 4096):  # the parent has gone
                raise EOFError
        except BlockingIOError:
            pass


def _fill() -> None:
    """Take in what the parent has sent (the request pipe is non-blocking). EOFError when the parent has gone."""
    while True:
        try:
            chunk = os.read(0, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            raise EOFError
        _inbox.extend(chunk)


def _complete() -> int | None:
    """The length of the request at the front of the inbox when all of it has arrived, else None."""
    if len(_inbox) < 4:
        return None
    (length,) = struct.unpack_from("<I", _inbox)
    return length if len(_inbox) >= 4 + length else None


def _next_message():
    """The next request, in order: what has arrived first, then what the pipe holds, then wait for more."""
    while (length := _complete()) is None:
        _fill()
        if _complete() is None:
            _wait()
            _fill()
    raw = bytes(_inbox[4:4 + length])
    del _inbox[:4 + length]
    return pickle.loads(raw)  # from the trusted parent


def _write(payload: bytes) -> None:
    """One reply, written at once (it wakes the parent only when the parent waits for it)."""
    view = memoryview(struct.pack("<I", len(payload)) + payload)
    while view:
        view = view[os.write(1, view):]


def _reply_json(obj) -> None:
    _write(json.dumps(obj, allow_nan=False).encode())


# ----------------------------------------------------------------------------------------------------------
# Confinement
# ----------------------------------------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT = 1, 38, 24, 47


NOBODY = 65534


def _drop_root() -> int:
    """Started as root (containers, CI): become nobody, so that the kernel's own permission checks (files the
    learner owns, signals, scheduling) refuse what the other layers might miss. A change of user clears the
    parent-death signal, so it is set again. Returns the user id the worker runs as."""
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError:
            pass
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the learner died in between
            os._exit(1)
    return os.geteuid()


def _drop_capabilities() -> bool:
    for cap in range(64):  # the bounding set, then ambient, permitted, effective, inheritable
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    return _libc.capset(header, data) == 0


def _landlock() -> int:
    """Forbid every filesystem access Landlock knows; return the ABI version applied (0: unavailable)."""
    try:
        import landlock

        ctypes.set_errno(0)  # the binding reads errno after each call: clear what earlier prctl calls left
        abi = landlock.landlock_abi_version()
        ruleset = landlock.Ruleset()  # handles every access right of this ABI, allows none
        ruleset.apply()
        os.close(ruleset._fd)  # the binding keeps it open; the restriction stays
        if abi >= 6:
            _landlock_scopes()
        return int(abi)
    except Exception:  # noqa: BLE001 - no Landlock in this kernel or no binding: reported to the parent
        return 0


LANDLOCK_CREATE_RULESET, LANDLOCK_RESTRICT_SELF = 444, 446  # the same numbers on every architecture
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2


def _landlock_scopes() -> bool:
    """Landlock ABI 6's scopes (the binding has no call for them): no signal, including the kernel's I/O signals
    (F_SETOWN), to any process outside this worker, and no abstract unix socket outside it."""
    attr = (ctypes.c_uint64 * 3)(0, 0, LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL)
    fd = _libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
    if fd < 0:
        return False
    try:
        return _libc.syscall(LANDLOCK_RESTRICT_SELF, fd, 0) == 0
    finally:
        os.close(fd)


#: refused outright (EPERM)
DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "clone", "clone3",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "tkill", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_by_handle_at",
    "name_to_handle_at", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "setrlimit", "personality", "memfd_create",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "capset", "acct",
    "quotactl", "syslog", "vhangup", "iopl", "ioperm", "mbind", "migrate_pages", "move_pages",
    # System V and POSIX IPC: state shared between workers (verification -> training), memory outside the rlimit
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "ipc", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # file metadata (Landlock has no right for it): mode, owner, times, extended attributes; paths looked up
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "getxattr", "lgetxattr", "listxattr", "llistxattr", "stat", "lstat", "newfstatat", "statx",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat", "truncate", "inotify_init", "inotify_init1",
    "fanotify_init", "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "mkdir", "mkdirat", "mknod", "mknodat", "rmdir", "chdir", "fchdir",
    # other processes' scheduling and memory; its own session and process group stay as the learner made them
    "process_madvise", "process_mrelease", "get_robust_list", "setsid", "setpgid", "sched_setaffinity",
    "sched_setscheduler", "sched_setparam", "sched_setattr", "setpriority", "ioprio_set",
)
#: fcntl commands refused: F_SETOWN, F_SETSIG, F_SETOWN_EX (the kernel would signal any process of the user on
#: I/O), F_SETLEASE, F_NOTIFY, F_SETPIPE_SZ (shrinking the pipe the learner writes to)
DENIED_FCNTL = (8, 10, 15, 1024, 1026, 1031)
F_SETFL, O_ASYNC = 4, 0o20000
#: prctl options refused: PR_SET_PDEATHSIG (outliving the learner), PR_SET_MM, PR_SET_CHILD_SUBREAPER,
#: PR_SET_PTRACER
DENIED_PRCTL = (1, 35, 36, 0x59616D61)
#: ioctls refused: TIOCSTI, TIOCLINUX (terminal input injection), FIOASYNC, FIOSETOWN, SIOCSPGRP (I/O signals)
DENIED_IOCTL = (0x5412, 0x541C, 0x5452, 0x8901, 0x8902)
LOW32 = 0xFFFFFFFF


def _seccomp_filter():
    """The filter, built (libseccomp loaded) while files can still be opened; loaded last by `confine`."""
    try:
        import pyseccomp as sc

        f = sc.SyscallFilter(defaction=sc.ALLOW)
        deny = sc.ERRNO(errno.EPERM)
        for name in DENIED_SYSCALLS:
            try:
                f.add_rule(deny, name)
            except Exception:  # noqa: BLE001 - a syscall this architecture does not have
                pass
        pid = os.getpid()
        # signals only to itself
        f.add_rule(deny, "kill", sc.Arg(0, sc.NE, pid))
        f.add_rule(deny, "tgkill", sc.Arg(0, sc.NE, pid))
        f.add_rule(deny, "rt_sigqueueinfo", sc.Arg(0, sc.NE, pid))
        f.add_rule(deny, "rt_tgsigqueueinfo", sc.Arg(0, sc.NE, pid))
        # rlimits may be read, never set
        f.add_rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))
        for cmd in DENIED_IOCTL:
            f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
        # the kernel reads these arguments as 32-bit ints: compare the low 32 bits, or high bits would slip past
        for cmd in DENIED_FCNTL:
            f.add_rule(deny, "fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, cmd))
        f.add_rule(deny, "fcntl", sc.Arg(1, sc.MASKED_EQ, LOW32, F_SETFL), sc.Arg(2, sc.MASKED_EQ, O_ASYNC, O_ASYNC))
        for option in DENIED_PRCTL:
            f.add_rule(deny, "prctl", sc.Arg(0, sc.MASKED_EQ, LOW32, option))
        return f
    except Exception:  # noqa: BLE001 - no libseccomp: reported to the parent
        return None


def _limits(memory_mb: int, cpu_s: int, vm: int, highest_fd: int, nofile: bool = True) -> dict:
    limit = vm + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if nofile:  # no new file descriptors ("nofile" in skip: for the tests' control runs only)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest_fd + 1, highest_fd + 1))
    return {"memory_mb": memory_mb, "cpu_s": cpu_s, "nofile": highest_fd + 1 if nofile else 0, "fsize": 0}


def _warm_up() -> None:
    """Import what numpy loads lazily on first use, while files can still be opened."""
    import numpy.linalg  # noqa: F401
    import numpy.fft  # noqa: F401

    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    for fn in (a.any, a.all, a.sum, a.mean, a.std, a.var, a.max, a.min, a.argmax, a.argmin, a.prod, a.cumsum,
               a.round):
        fn()
    a.astype(np.uint8).view(np.int8)
    np.linalg.norm(a), np.linalg.norm(a, axis=1), np.argwhere(a > 2), np.nonzero(a), np.unique(a), np.where(a > 1)
    np.isclose(a, 1.0), np.allclose(a, a), np.clip(a, 0, 1), np.sort(a), np.median(a), np.percentile(a, 50)
    np.abs(a).astype(int), np.hypot(a, a), np.arctan2(a, a), np.stack([a, a]), np.concatenate([a, a]), np.diff(a)
    np.count_nonzero(a), np.array_equal(a, a), np.isin(a, [1]), np.argsort(a), np.mean(a, axis=0), np.dot(a, a.T)
    np.all(np.isfinite(a)), np.cross([1.0, 0, 0], [0, 1.0, 0]), np.asarray([1, 2]).tolist(), repr(a), str(a)
    repr(np.float64(1.5)), repr(np.int64(2)), repr(np.bool_(True)), str(np.uint8(3)), float(np.float32(1.5))
    "{:.3f}".format(1.0), "%d" % 3, f"{a.shape}", math.isfinite(1.0), math.hypot(1, 2)
    try:
        {}["missing"]
    except KeyError as e:
        traceback.format_exception(e)
    try:
        np.zeros(3)[5]
    except IndexError as e:
        traceback.format_exception(e)


def confine(memory_mb: int, cpu_s: int, skip: set[str]) -> dict:
    status: dict = {"pid": os.getpid()}
    with open("/proc/self/statm") as f:  # read while files can be opened
        vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    highest_fd = max(fd for fd in open_fds if fd != max(open_fds))  # the last one was listdir's own
    seccomp_filter = None if "seccomp" in skip else _seccomp_filter()
    try:  # imported now: the user the worker becomes may not read the site-packages
        import landlock  # noqa: F401
    except ImportError:
        pass
    status["user"] = os.geteuid() if "user" in skip else _drop_root()
    status["no_new_privs"] = _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    status["capabilities_dropped"] = _drop_capabilities()
    status["landlock_abi"] = 0 if "landlock" in skip else _landlock()
    status["rlimits"] = _limits(memory_mb, cpu_s, vm, highest_fd, "nofile" not in skip)
    status["seccomp"] = False
    if seccomp_filter is not None:
        try:
            seccomp_filter.load()
            status["seccomp"] = True
        except Exception:  # noqa: BLE001
            pass
    return status


# ----------------------------------------------------------------------------------------------------------
# The program
# ----------------------------------------------------------------------------------------------------------
_SCALARS = (int, float, str, bool, type(None), np.generic)


def freeze(value):
    """A read-only version of a view or a constant: dicts become mappingproxies, lists and sets tuples and
    frozensets, arrays non-writeable. A pure program sees the same values on every call."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, PackedArray):  # read-only over immutable bytes: numpy refuses to make it writeable
        return np.frombuffer(value.data, dtype=value.dtype).reshape(value.shape)
    if isinstance(value, np.ndarray):  # not packed by the parent: the same copy over immutable bytes
        return freeze(pack(value))
    if isinstance(value, dict):
        return types.MappingProxyType({k: v if isinstance(v, _SCALARS) else freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        if isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value):
            return value
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    return value


class Loaded:
    def __init__(self, source: str, constants: dict, name: str):
        import linecache

        info = check_source(source, name)  # the parent checked it too; a program never runs unchecked
        self.name, self.k = name, len(info.subtasks)
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        builtins_ = dict(SAFE_BUILTINS)
        builtins_["__import__"] = restricted_import
        namespace = {"__builtins__": builtins_, "__name__": "reward_program", "np": np, "math": math}
        namespace.update({k: freeze(v) for k, v in constants.items()})
        exec(compile(source, name, "exec"), namespace)  # noqa: S102 - confined process, minimal builtins
        for key, value in list(namespace.items()):  # module-level data is read-only from here on
            if key not in ("__builtins__", "np", "math") and not isinstance(value, types.FunctionType):
                namespace[key] = freeze(value)
        self.subtask = [namespace[f"subtask_{i}"] for i in range(1, self.k + 1)]
        self.progress = [namespace.get(f"progress_{i}") for i in range(1, self.k + 1)]
        self.failures = 0
        self.first_error = ""  # the first failure's traceback, for the learner's log

    # verification semantics: failures surface as exceptions
    def check_raw(self, k: int, obs, start) -> bool:
        result = self.subtask[k](obs, start)
        if result is True or result is False:
            return result
        if isinstance(result, np.bool_):
            return bool(result)
        raise TypeError(f"subtask_{k + 1} returned {_describe(result)}, not a bool")

    def progress_raw(self, k: int, obs, start):
        fn = self.progress[k]
        return None if fn is None else progress_value(k, fn(obs, start))

    # training semantics: any failure is False / 0.0, counted
    def check(self, k: int, obs, start) -> bool:
        try:
            return self.check_raw(k, obs, start)
        except BaseException as e:  # noqa: BLE001 - generated code may raise anything
            self._failed(e)
            return False

    def progress_or_zero(self, k: int, obs, start) -> float:
        try:
            value = self.progress_raw(k, obs, start)
        except BaseException as e:  # noqa: BLE001
            self._failed(e)
            return 0.0
        return 0.0 if value is None else value

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self.first_error:
            self.first_error = _traceback(exc, self.name)


def _describe(value) -> str:
    """A short, safe description of a value a program returned (no repr of arbitrary objects)."""
    name = type(value).__name__
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        try:
            return f"{name} {float(value):.6g}"
        except (OverflowError, ValueError):
            return name
    if isinstance(value, str):
        return f"str of length {len(value)}"
    if isinstance(value, np.ndarray):
        return f"ndarray of shape {value.shape}"
    return name


def _traceback(exc: BaseException, name: str) -> str:
    try:
        text = short_traceback(exc, name)
    except BaseException:  # noqa: BLE001 - str() of a huge int, a deeply nested list, ...
        try:
            text = f"  {type(exc).__name__} (its message could not be formatted)"
        except BaseException:  # noqa: BLE001
            text = "  an exception that could not be described"
    return sanitize(text, MAX_TEXT)


# ----------------------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------------------
def _walk(program: Loaded, views: list, with_progress: bool) -> dict:
    """One recorded episode through the hook's rule (`advance`), with verification's accounting."""
    K = program.k
    seconds, calls = [0.0] * K, [0] * K
    exc_count, exc_examples = [0] * K, []
    start = freeze(views[0]) if views else None

    def check(k, obs, start_view):
        t0 = time.perf_counter()
        try:
            return program.check_raw(k, obs, start_view)
        except BaseException as e:  # noqa: BLE001
            exc_count[k] += 1
            if len(exc_examples) < 3:
                exc_examples.append([k, _traceback(e, program.name)])
            return False
        finally:
            seconds[k] += time.perf_counter() - t0
            calls[k] += 1

    frozen = [start] + [freeze(v) for v in views[1:]]
    steps = completion_steps(check, K, frozen)
    prog_count, prog_examples = [0] * K, []
    if with_progress:  # progress_k where the hook calls it: on each view while sub-task k is next
        for t, view in enumerate(frozen):
            k = sum(s is not None and s <= t for s in steps)
            if k >= K:
                break
            try:
                program.progress_raw(k, view, start)
            except BaseException as e:  # noqa: BLE001
                prog_count[k] += 1
                if len(prog_examples) < 3:
                    prog_examples.append([k, _traceback(e, program.name)])
    return {"steps": steps, "seconds": seconds, "calls": calls, "exceptions": exc_count,
            "exception_examples": exc_examples, "progress_problems": prog_count, "progress_examples": prog_examples}


def _unpack_columns(msg: dict):
    """The (index, k, view, None) items of a step sent as columns (program.pack_columns): each env's view is a
    mappingproxy whose arrays are read-only, each over its own immutable bytes (a row of a shared array would lead,
    through `.base`, to the other envs' views: a program must see only its own env)."""
    keys, columns = msg["columns"]
    cols = []
    for key in keys:
        col = columns[key]
        if isinstance(col, (PackedArray, SharedArray)):
            dtype, shape = np.dtype(col.dtype), col.shape[1:]
            size = dtype.itemsize * math.prod(shape)
            if isinstance(col, PackedArray):
                data = memoryview(col.data)
            else:  # in the shared ring: the learner does not touch it until this step is answered
                data = _shared[col.offset:col.offset + size * col.shape[0]]
                if len(data) != size * col.shape[0]:
                    raise ValueError("a shared column lies outside the shared memory")
            col = [np.frombuffer(bytes(data[j * size:(j + 1) * size]), dtype=dtype).reshape(shape)
                   for j in range(col.shape[0])]
        else:  # scalars and tuples of them are immutable as they are
            col = [v if type(v) in _PLAIN or type(v) is tuple and all(type(x) in _PLAIN for x in v) else freeze(v)
                   for v in col]
        cols.append(col)
    proxy = types.MappingProxyType
    rows = zip(*cols) if cols else [()] * len(msg["index"])  # views without keys: empty rows
    for (i, k), values in zip(msg["index"], rows):
        yield i, k, proxy(dict(zip(keys, values))), None


def _steps(program: Loaded, starts: dict, ks: dict, msg: dict) -> None:
    """Vector steps, in order (`msg["steps"]`: the number of envs of each): for each env (index, k, view, start view
    or None). k is -1 when a new episode begins with this view, None to go on from the next sub-task this worker's
    last answer gave the env, or the next sub-task itself (after a restart, with the episode's start view). Each
    step's answer, a fixed-size record, is written as soon as it is known (a later step may hang)."""
    K, with_progress = program.k, msg["progress"]
    items = ((i, k, freeze(view), start) for i, k, view, start in msg["items"]) if "items" in msg \
        else _unpack_columns(msg)  # frozen as they are unpacked
    for n in msg["steps"]:
        new_k = [0] * n
        progress = [0.0] * n
        program.failures = 0
        for i, k, view, start in islice(items, n):
            if start is not None:
                starts[i] = freeze(start)
            if k is None:
                k = ks[i]
            if k < 0:  # a new episode begins with this view
                starts[i] = view
                k = 0
            else:
                k = advance(program.check, k, K, view, starts[i])
            new_k[i] = ks[i] = k
            if with_progress and k < K:
                progress[i] = program.progress_or_zero(k, view, starts[i])
        _write(struct.pack(f"<i{n}i{n}d", program.failures, *new_k, *progress))


def _call(program: Loaded, msg: dict) -> dict:
    """One function call with verification semantics, for tests and tools: the value or the error."""
    fn = program.check_raw if msg["kind"] == "subtask" else program.progress_raw
    try:
        value = fn(msg["k"], freeze(msg["obs"]), freeze(msg["start"]))
    except BaseException as e:  # noqa: BLE001
        return {"error": _traceback(e, program.name)}
    return {"value": value}


def serve() -> None:
    program: Loaded | None = None
    starts: dict = {}
    ks: dict = {}
    while True:
        try:
            msg = _next_message()
        except EOFError:
            return
        op = msg["op"]
        if op == "load":
            try:
                program = Loaded(msg["source"], msg["constants"], msg["name"])
            except BaseException as e:  # noqa: BLE001 - module level raised, too deep to compile, ...
                _reply_json({"ok": False, "error": _traceback(e, msg["name"])})
            else:
                _reply_json({"ok": True, "subtasks": program.k,
                             "has_progress": [fn is not None for fn in program.progress]})
        elif op == "walk":
            _reply_json(_walk(program, msg["views"], msg["progress"]))
        elif op == "step":
            _steps(program, starts, ks, msg)
        elif op == "call":
            _reply_json(_call(program, msg))
        elif op == "first_error":
            _reply_json({"error": program.first_error})
        else:
            return


def _map_read_only(fd: int, size: int) -> memoryview:
    """A read-only shared mapping of `fd` (libc's mmap: Python's mmap object keeps a duplicate of the descriptor)."""
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap of the shared ring failed")
    return memoryview((ctypes.c_char * size).from_address(addr)).cast("B")


def main(argv: list[str]) -> None:
    opts = json.loads(argv[-1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlive the parent
    if os.getppid() == 1:
        os._exit(1)
    _warm_up()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # nothing of the program reaches a terminal
    os.close(devnull)
    if opts.get("batch_scheduling", False):
        try:  # a request does not preempt the learner that sent it (see confine.ProgramWorker)
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (OSError, AttributeError):
            pass
    global _doorbell, _shared
    _doorbell = int(opts.get("doorbell", -1))
    shm = int(opts.get("shm", -1))
    if shm >= 0:  # the learner's SharedRing, read-only (its seals refuse a writable mapping); the fd is not kept
        try:
            _shared = _map_read_only(shm, int(opts["shm_bytes"]))
        except OSError:  # the greeting says so: the learner then sends every array through the pipe
            pass
        os.close(shm)
    os.set_blocking(0, False)
    if _doorbell >= 0:
        os.set_blocking(_doorbell, False)
    status = confine(int(opts["memory_mb"]), int(opts["cpu_s"]), set(opts.get("skip", ())))
    _reply_json({"ready": True, "confinement": status, "shared_memory": len(_shared) > 0})
    try:
        serve()
    except MemoryError:
        os._exit(3)
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - started by confine.py
    main(sys.argv)
