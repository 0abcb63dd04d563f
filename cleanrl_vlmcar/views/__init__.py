"""Observation views: what reward programs read.

A view is computed from a live environment by a small adapter. An adapter is made per environment instance (it may
keep state between steps, for speed) and offers `reset(obs, info)` and `step(obs, info)`, each returning the view
of the current state; adapters that read the environment itself ignore the arguments (`needs_obs = False`). Each
view is documented as a `Field` table; docs/views.md and the VLM prompt are generated from those same tables.
Which views an environment has is its family's business (`cleanrl_vlmcar.families`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym

from ..errors import UnsupportedEnvError


@dataclass(frozen=True)
class Field:
    """One entry of a view: its name, type and meaning (the text the VLM reads)."""

    name: str
    type: str
    doc: str


@dataclass(frozen=True)
class ViewSpec:
    """A documented view of an environment family."""

    family: str
    view: str
    summary: str
    fields: tuple[Field, ...]
    constants_doc: str  # what the constants in the program's namespace mean
    make: Callable[[gym.Env], "ViewAdapter"]
    constants: Callable[[], dict[str, Any]]
    notes: str = ""

    def doc(self, env_id: str | None = None) -> str:
        """Markdown documentation of this view: the same text goes into the README and the VLM prompt."""
        lines = [f"### `{self.view}` view ({self.family})", "", self.summary, "",
                 "`obs` and `start` are dicts with these keys:", "", "| key | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{f.name}` | {f.type} | {f.doc} |" for f in self.fields]
        if self.constants_doc:
            lines += ["", self.constants_doc]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines)


class ViewAdapter:
    """Computes a view from one environment instance. Subclasses implement `reset` and `step`; those that build the
    view from the observation and info the environment returned set `needs_obs = True`, and callers pass them."""

    spec: ViewSpec
    needs_obs = False

    def __init__(self, env: gym.Env):
        self.env = env
        self.unwrapped = env.unwrapped

    def reset(self, obs: Any = None, info: dict | None = None) -> dict:
        """The view right after `env.reset()` (which returned `obs`, `info`)."""
        raise NotImplementedError

    def step(self, obs: Any = None, info: dict | None = None) -> dict:
        """The view right after `env.step()` (which returned `obs`, ..., `info`)."""
        raise NotImplementedError


class ViewError(UnsupportedEnvError):
    """An environment or view name this package cannot serve; the message says what can be used."""


def family_of(env: gym.Env) -> str:
    """The name of the family that claims this environment (`generic` when no other does)."""
    from .. import families

    return families.family_of(env).name


def get_spec(env: gym.Env, view: str) -> ViewSpec:
    """The ViewSpec of `view` for this environment; ViewError when its family has no such view."""
    from .. import families

    family = families.family_of(env)
    specs = family.specs(env)
    if view not in specs:
        raise ViewError(f"{_env_id(env)} ({family.name} family) has no '{view}' view; choose one of: "
                        f"{', '.join(sorted(specs))}")
    return specs[view]


def make_view(env: gym.Env, view: str) -> ViewAdapter:
    """A view adapter bound to `env` (one per environment instance)."""
    return get_spec(env, view).make(env)


def all_specs() -> list[ViewSpec]:
    """Every view of the families with fixed views, for documentation (the generic family's views are
    documented per environment)."""
    from .. import families

    return [spec for family in families.families() for spec in family.views.values()]


def _env_id(env: gym.Env) -> str:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__
