"""The failures the training scripts and the CLI stop on, each with a message that says what to do.

Catch `VLMCaRError` to catch exactly these (and not, say, a torch error):

* `NoProgramError`: no verified reward program (none cached, synthesis or verification failed, a program file
  that does not check, a corrupt cache entry);
* `UnsupportedEnvError`: an environment or view this package cannot serve;
* `UsageError`: options that cannot work together (e.g. `--reward-program` with `--reward clip`);
* `BackendError`: the VLM or CLIP backend failed (endpoint, model loading, a malformed answer);
* `ConfinementError`: `--require-confinement` on a machine without Landlock or seccomp;
* `WorkerError`: the confined program worker failed (timeout, crash, malformed reply, top level raised).

Each also subclasses the built-in exception it used to be (ValueError or RuntimeError), so older callers keep
working.
"""

from __future__ import annotations


class VLMCaRError(Exception):
    """Base class of every failure this package reports to its user."""


class NoProgramError(VLMCaRError, RuntimeError):
    """No verified reward program could be found, produced or loaded."""


class UnsupportedEnvError(VLMCaRError, ValueError):
    """An environment, view or option this package cannot serve; the message lists what can be used."""


class NoExpertError(UnsupportedEnvError):
    """No scripted expert for this environment: verification needs demonstrations instead."""


class UsageError(VLMCaRError, ValueError):
    """Options that cannot work together, or an API used out of order; the message says what to change."""


class BackendError(VLMCaRError, RuntimeError):
    """A VLM or CLIP backend failed: the endpoint, the model, or its answer."""


class ConfinementError(VLMCaRError, RuntimeError):
    """The operating-system confinement of reward programs is incomplete and --require-confinement was given."""


class WorkerError(VLMCaRError, RuntimeError):
    """The confined program worker failed. `kind`: timeout, crash, protocol or load."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
