"""Regenerate the generated sections of README.md: the view docs (the same text the VLM prompt uses) and the table
of shipped reward programs (from reward_cache/). Run after changing a view or a cache entry; a test checks both."""

import json
import re
from pathlib import Path

from cleanrl_vlmcar.views import all_specs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def render() -> str:
    return "\n\n".join(spec.doc().replace("### ", "#### ") for spec in all_specs())


def render_rewards() -> str:
    lines = ["| env | view | rounds | sub-task: expert / random completion | random threshold |",
             "| --- | --- | --- | --- | --- |"]
    for path in sorted((ROOT / "reward_cache").glob("*.json")):
        e = json.loads(path.read_text())
        if not e.get("passed"):
            continue
        subs = "<br>".join(f"{s['index']}. {s['description']}: {s['expert_rate']:.0%} / {s['random_rate']:.0%}"
                           for s in e["report"]["subtasks"])
        lines.append(f"| {e['env_id']} | {e['view']} | {len(e['rounds'])} | {subs} | "
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
