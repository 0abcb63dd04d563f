"""Regenerate the generated sections of README.md: the view docs (the same text the VLM prompt uses) and the table
of shipped reward programs (from reward_cache/). Run after changing a view or a cache entry; a test checks both."""

import json
import re
from pathlib import Path

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.program import check_source
from cleanrl_vlmcar.views import all_specs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def render() -> str:
    return "\n\n".join(spec.doc().replace("### ", "#### ") for spec in all_specs())


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


def _replace(text: str, name: str, body: str) -> str:
    return re.sub(rf"<!-- {name}:start -->.*<!-- {name}:end -->",
                  lambda _: f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->", text, flags=re.S)


def main() -> None:
    text = _replace(README.read_text(), "views", render())
    README.write_text(_replace(text, "rewards", render_rewards()))


if __name__ == "__main__":
    main()
