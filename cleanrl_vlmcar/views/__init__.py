"""Observation views: what reward programs read.

A view is computed from a live environment by a small adapter, one file per environment family
(`minigrid.py`, `panda.py`). An adapter is made per environment instance (it may keep state between steps,
for speed) and offers `reset()` and `step()`, each returning the view of the current state. Each family
documents its views as `Field` tables; the README and the VLM prompt are generated from those same tables.
Adding an environment family means adding one module that registers its adapters with `register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym


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
    """Computes a view from one environment instance. Subclasses implement `reset` and `step`."""

    spec: ViewSpec

    def __init__(self, env: gym.Env):
        self.env = env
        self.unwrapped = env.unwrapped

    def reset(self) -> dict:
        """The view right after `env.reset()`."""
        raise NotImplementedError

    def step(self) -> dict:
        """The view right after `env.step()`."""
        raise NotImplementedError


class ViewError(ValueError):
    """An environment or view name this package cannot serve; the message says what can be used."""


_FAMILIES: dict[str, tuple[Callable[[gym.Env], bool], dict[str, ViewSpec]]] = {}


def register(family: str, matches: Callable[[gym.Env], bool], specs: dict[str, ViewSpec]) -> None:
    """Register an environment family: a predicate on `env.unwrapped` and its views by name."""
    _FAMILIES[family] = (matches, specs)


def _load_families() -> None:
    if not _FAMILIES:
        from . import minigrid, panda  # noqa: F401 - registration on import


def family_of(env: gym.Env) -> str:
    """The family name of an environment, or ViewError naming the supported families."""
    _load_families()
    for family, (matches, _) in _FAMILIES.items():
        if matches(env.unwrapped):
            return family
    raise ViewError(f"no reward views for {env.unwrapped.__class__.__name__} ({_env_id(env)}); supported families: "
                    f"{', '.join(sorted(_FAMILIES))}. Add an adapter in cleanrl_vlmcar/views/ to support it.")


def get_spec(env: gym.Env, view: str) -> ViewSpec:
    """The ViewSpec of `view` for this environment; ViewError when the family has no such view."""
    family = family_of(env)
    specs = _FAMILIES[family][1]
    if view not in specs:
        raise ViewError(f"the {family} family has no '{view}' view; choose one of: {', '.join(sorted(specs))}")
    return specs[view]


def make_view(env: gym.Env, view: str) -> ViewAdapter:
    """A view adapter bound to `env` (one per environment instance)."""
    return get_spec(env, view).make(env)


def all_specs() -> list[ViewSpec]:
    """Every registered view, for documentation."""
    _load_families()
    return [spec for _, specs in _FAMILIES.values() for spec in specs.values()]


def _env_id(env: gym.Env) -> str:
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else "unregistered env"
