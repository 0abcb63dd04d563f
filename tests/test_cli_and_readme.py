"""The CLI verbs' exit codes and messages, and the README's generated sections."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cleanrl_vlmcar.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def test_readme_views_section_is_current():
    from update_readme_views import render

    text = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- views:start -->\n(.*)\n<!-- views:end -->", text, flags=re.S).group(1)
    assert section == render(), "run python scripts/update_readme_views.py"


def test_readme_rewards_table_is_current():
    from update_readme_views import render_rewards

    text = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- rewards:start -->\n(.*)\n<!-- rewards:end -->", text, flags=re.S).group(1)
    assert section == render_rewards(), "run python scripts/update_readme_views.py"
    assert section.count("\n| MiniGrid-") == 10 and section.count("\n| Panda") == 4


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


def test_cli_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "check", str(ROOT / "examples" / "keycorridor_state.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "cleanrl_vlmcar", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr
