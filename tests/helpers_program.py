"""Shared helpers for reward programs in tests: calling one in a confined worker (tests/test_program.py and
tests/test_confinement.py), and a minimal reward-cache entry holding one (tests/test_generate.py and
tests/test_cache.py)."""

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.confine import ProgramWorker
from cleanrl_vlmcar.program import load_program

ENV = "MiniGrid-KeyCorridorS3R1-v0"  # the env of minimal_entry's entries


def run(source, calls, constants=None):
    """[(value, error)] of each (kind, k, obs, start) call, in one confined worker."""
    with ProgramWorker(load_program(source, constants)) as w:
        return [w.call(kind, k, obs, start) for kind, k, obs, start in calls]


def minimal_entry(program: str, passed: bool, **extra) -> dict:
    """A complete reward-cache entry for ENV's state view, made by the manual backend, holding `program`."""
    return {"env_id": ENV, "view": "state", "backend": "manual", "model": "", "rounds": [], "program": program,
            "passed": passed, "report": None, "created": cache.now(), "complete": True, **extra}
