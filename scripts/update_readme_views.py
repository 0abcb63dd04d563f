"""Regenerate the generated sections of the documentation: the view docs in docs/views.md (the same text the VLM
prompt uses) and the table of shipped reward programs in docs/synthesis.md (from reward_cache/). Each section sits
between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers. Run after changing a view or a cache entry; a test
(tests/test_cli_and_readme.py) checks both. The file keeps its old name; the sections moved out of README.md."""

import json
import re
from pathlib import Path

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.program import check_source
from cleanrl_vlmcar.views import all_specs

ROOT = Path(__file__).resolve().parents[1]
VIEWS_DOC = ROOT / "docs" / "views.md"
REWARDS_DOC = ROOT / "docs" / "synthesis.md"


def render() -> str:
    """The shipped families' views, then the generic family's views of one example environment (MountainCar-v0; for
    any other environment they are built from its observation space)."""
    from cleanrl_vlmcar.families import get_family, make_env

    example = get_family("generic").specs(make_env("MountainCar-v0"))
    docs = [spec.doc() for spec in all_specs()] + [spec.doc() + "\n\n(Shown for MountainCar-v0; for another "
                                                   "environment the table follows its observation space.)"
                                                   for spec in example.values()]
    # the views' own headings are `###`; on docs/views.md they sit right under the page title
    return re.sub(r"^### ", "## ", "\n\n".join(docs), flags=re.M)


def render_rewards() -> str:
    """One row per (env id, view): the entry training uses (the newest passing one; earlier ones set aside by
    `--force` are not listed)."""
    lines = ["| env | view | rounds | sub-task: expert / random completion | progress_k | random threshold |",
             "| --- | --- | --- | --- | --- | --- |"]
    pairs = sorted({(e["env_id"], e["view"]) for e in map(json.loads, map(Path.read_text,
                                                                             (ROOT / "reward_cache").glob("*.json")))})
    for env_id, view in pairs:
        found = cache.lookup(env_id, view, ROOT / "reward_cache")
        if found is None:
            continue
        e = found[1]
        subs = "<br>".join(f"{s['index']}. {s['description']}: {s['expert_rate']:.0%} / {s['random_rate']:.0%}"
                           for s in e["report"]["subtasks"])
        progress = ", ".join(str(i) for i, p in enumerate(check_source(e["program"]).has_progress, 1) if p) or "-"
        lines.append(f"| {env_id} | {view} | {len(e['rounds'])} | {subs} | {progress} | "
                     f"{e['settings']['random_threshold']:.0%} |")
    return "\n".join(lines)


SECTIONS = {"views": (VIEWS_DOC, render), "rewards": (REWARDS_DOC, render_rewards)}


def section(name: str) -> str:
    """The current text between the `name` markers of its page (what the test compares with the generator)."""
    path = SECTIONS[name][0]
    found = re.search(rf"<!-- {name}:start -->\n(.*)\n<!-- {name}:end -->", path.read_text(), flags=re.S)
    if found is None:
        raise SystemExit(f"error: {path.relative_to(ROOT)} has no <!-- {name}:start --> ... <!-- {name}:end --> markers")
    return found.group(1)


def _replace(text: str, name: str, body: str) -> str:
    return re.sub(rf"<!-- {name}:start -->.*<!-- {name}:end -->",
                  lambda _: f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->", text, flags=re.S)


def main() -> None:
    for name, (path, make) in SECTIONS.items():
        section(name)  # the markers must be there: a silent no-op would leave the page stale
        path.write_text(_replace(path.read_text(), name, make()))


if __name__ == "__main__":
    main()
