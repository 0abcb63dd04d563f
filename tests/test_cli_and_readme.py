"""The CLI verbs' exit codes and messages, and the generated sections of the docs (docs/views.md,
docs/synthesis.md)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cleanrl_vlmcar.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _generated(page: str, name: str) -> str:
    text = (ROOT / "docs" / page).read_text()
    found = re.search(rf"<!-- {name}:start -->\n(.*)\n<!-- {name}:end -->", text, flags=re.S)
    assert found, f"docs/{page} lost its {name} markers"
    return found.group(1)


def test_views_section_is_current():
    """docs/views.md's generated section equals the generator's output (the views' own documentation)."""
    from update_readme_views import render

    assert _generated("views.md", "views") == render(), "run python scripts/update_readme_views.py"


def test_rewards_table_is_current():
    """docs/synthesis.md's table of shipped programs equals the generator's output (from reward_cache/)."""
    from update_readme_views import render_rewards

    section = _generated("synthesis.md", "rewards")
    assert section == render_rewards(), "run python scripts/update_readme_views.py"
    import json

    pairs = {(e["env_id"], e["view"]) for e in (json.loads(p.read_text()) for p in (ROOT / "reward_cache").glob("*.json"))
             if e.get("passed")}
    rows = [line for line in section.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == len(pairs) >= 15  # one row per (env id, view) with a passing entry
    assert all(any(row.startswith(f"| {prefix}") for row in rows) for prefix in ("MiniGrid-", "Panda", "MountainCar"))


def test_readme_test_command_is_the_ci_command():
    """.ci/run runs "the README's test command": the line after that comment is in the README's set-up block."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# the README's test command:") + 1].strip()
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set-up: two commands"):]
    assert f"\n{command}\n" in setup[:setup.index("\n## ", 1)]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces as hyphens)."""
    seen: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            if n:
                seen[f"{slug}-{n}"] = 1
    return set(seen)


def test_doc_links_resolve():
    """Every relative link in README.md and docs/*.md names an existing file, and an existing heading if it has
    an anchor."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_check_ok_and_rejected(tmp_path, capsys):
    assert main(["check", str(ROOT / "examples" / "keycorridor_state.py")]) == 0
    assert "3 sub-task(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nSUBTASKS = ['a']\ndef subtask_1(obs, start):\n    return eval('1')\n")
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.py:1: import of 'os'" in out and "bad.py:4: 'eval'" in out


def test_check_missing_file_is_bad_input(capsys):
    assert main(["check", "/no/such/program.py"]) == 2
    assert "cannot read program file" in capsys.readouterr().err


def test_check_with_env_constants(capsys):
    path = str(ROOT / "examples" / "keycorridor_state.py")
    assert main(["check", path, "--env-id", "MiniGrid-KeyCorridorS3R1-v0"]) == 0
    assert main(["check", path, "--env-id", "MiniGrid-KeyCorridorS3R1-v0", "--view", "depth"]) == 2
    assert "no 'depth' view" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "check", str(ROOT / "examples" / "keycorridor_state.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr
