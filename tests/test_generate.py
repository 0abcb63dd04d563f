"""Tests for the generate stage (cleanrl_vlmcar.generate); the reward cache's own tests are in test_cache.py.

No network and no model weights: the openai backend talks to a scripted loopback server on 127.0.0.1, the hf
backend runs a tiny random LLaVA built on the spot, the manual backend reads answers the test writes. Every
cache, trajectory and prompt folder lives under pytest's tmp paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_program import ENV
from helpers_program import minimal_entry as _minimal_entry
from helpers_vlm import ChatServer, build_tiny_vlm, completion, set_hf_offline, user_text

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.__main__ import main
from cleanrl_vlmcar.backends import BackendError, ManualAnswerNeeded, ManualBackend, OpenAIBackend, make_backend
from cleanrl_vlmcar.generate import SynthesisConfig, SynthesisError, reward_program, synthesize
from cleanrl_vlmcar.program import RewardProgram, check_source
from cleanrl_vlmcar.verify import VerifySettings
from cleanrl_vlmcar.views import ViewError

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("isolated_caches")]

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "examples" / "keycorridor_state.py").read_text()
GOOD_SUBTASKS = check_source(GOOD).subtasks
assert len(GOOD_SUBTASKS) == 3 and "key" in GOOD_SUBTASKS[0]
# sub-task 1 looks for a ball instead of a key: loads fine, fails verification (0% of expert episodes)
WRONG = GOOD.replace('carrying[0] != KEY', 'carrying[0] != OBJECT_TO_IDX["ball"]')
assert WRONG != GOOD
WRONG_ANSWER = ("Sub-tasks:\n1. pick up the key\n2. open the locked door\n3. pick up the target object\n\n"
                f"```python\n{WRONG}```\n\nThis program checks each sub-task on the state view.\n")
GOOD_ANSWER = f"Here is the corrected program; sub-task 1 now looks for the key.\n\n```python\n{GOOD}```\n"
EVAL_ANSWER = "```python\n" + GOOD.replace('words = obs["mission"].split()', 'words = eval("obs")["mission"].split()') \
    + "```\n"
assert "eval(" in EVAL_ANSWER
NO_BLOCK_ANSWER = "I would split the task into picking up the key, opening the door and picking up the ball.\n"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def cfg(traj_cache, tmp_path):
    def make(**kw):
        kw.setdefault("rounds", 3)
        verify = {k: kw.pop(k) for k in list(kw) if k in VerifySettings.__dataclass_fields__}
        return SynthesisConfig(verify=VerifySettings(**{"n": 5, **verify}), progress=False, traj_cache=traj_cache,
                               reward_cache=tmp_path / "rc", **kw)
    return make


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


class Scripted:
    """A backend that answers from a list and records the prompts it was asked."""

    name = "scripted"
    model = "script-1"

    def __init__(self, answers):
        self.answers = list(answers)
        self.prompts = []

    def settings(self):
        return {}

    def complete(self, prompt):
        self.prompts.append(prompt)
        return self.answers.pop(0)


class Exploding(Scripted):
    def complete(self, prompt):
        raise AssertionError("the backend must not be called")


def _cli(*args, traj_cache, reward_cache):
    return main(["synthesize", "--env-id", ENV, "--n", "5", "--cache-dir", str(traj_cache),
                 "--reward-cache", str(reward_cache), *args])


def _entries(reward_cache) -> list[Path]:
    return sorted(Path(reward_cache).glob("*.json"))


def _only_entry(reward_cache) -> dict:
    files = _entries(reward_cache)
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


# ------------------------------------------------------------------------------------------------ 1. manual


@pytest.mark.slow
def test_manual_cli_two_rounds_then_cache_hit(tmp_path, traj_cache, capsys):
    manual, rc = tmp_path / "manual", tmp_path / "rc"
    args = ("--vlm", "manual", "--manual-dir", str(manual))

    # round 1: the prompt is written, the command stops with exit 3 and names the folder
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3
    out = capsys.readouterr().out
    folders = sorted(p for p in manual.iterdir() if p.is_dir())
    assert len(folders) == 1
    first = folders[0]
    assert str(first) in out and "answer.md" in out
    prompt1 = (first / "prompt.md").read_text()
    assert ENV in prompt1 and "previous program failed" not in prompt1
    assert len(list(first.glob("*.png"))) == 2
    assert _entries(rc) == []  # no round completed yet: nothing to save

    # a wrong answer: round 2 is asked for, with the program and the verification report as feedback
    (first / "answer.md").write_text(WRONG_ANSWER)
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3
    out = capsys.readouterr().out
    folders = sorted(p for p in manual.iterdir() if p.is_dir())
    assert len(folders) == 2
    second = next(f for f in folders if f != first)
    assert str(second) in out
    prompt2 = (second / "prompt.md").read_text()
    assert "Your previous program failed verification" in prompt2
    assert 'carrying[0] != OBJECT_TO_IDX["ball"]' in prompt2  # the previous program
    assert "Verification FAILED" in prompt2
    assert "| # | sub-task | expert | random |" in prompt2 and "| 1 | pick up the key that matches" in prompt2
    assert "sub-task 1 ('pick up the key that matches the locked door') was completed in only 0%" in prompt2
    partial = _only_entry(rc)  # the finished round is kept while the answer to round 2 is awaited
    assert partial["complete"] is False and len(partial["rounds"]) == 1 and partial["rounds"][0]["passed"] is False

    # the right answer: passes, exit 0, both rounds recorded
    (second / "answer.md").write_text(GOOD_ANSWER)
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 0
    out = capsys.readouterr().out
    assert "Verification PASSED" in out
    [path] = _entries(rc)
    entry = json.loads(path.read_text())
    assert entry["backend"] == "manual" and entry["model"] == "" and entry["complete"] is True
    assert entry["passed"] is True and entry["program"] == GOOD
    assert [r["passed"] for r in entry["rounds"]] == [False, True]
    assert [r["answer"] for r in entry["rounds"]] == [WRONG_ANSWER, GOOD_ANSWER]
    assert entry["rounds"][0]["program"] == WRONG and entry["rounds"][1]["program"] == GOOD
    assert entry["rounds"][0]["prompt"] in prompt1 and entry["rounds"][1]["prompt"] in prompt2
    assert entry["rounds"][0]["prompt"] != entry["rounds"][1]["prompt"]
    assert "FAILED" in entry["rounds"][1]["prompt"]
    assert entry["report"]["passed"] is True and entry["rounds"][0]["report"]["passed"] is False
    before = path.read_bytes()

    # the same command again: a cache hit; no model, no new prompt folder, the entry untouched
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 0
    cap = capsys.readouterr()
    assert "cache hit" in cap.out + cap.err
    assert sorted(p for p in manual.iterdir() if p.is_dir()) == folders
    assert _entries(rc) == [path] and path.read_bytes() == before

    # through the API with a manual backend that must not be called: served from the cache
    class NoCall(ManualBackend):
        def complete(self, prompt):
            raise AssertionError("called the backend on a cache hit")

    result = synthesize(ENV, "state", NoCall(manual), SynthesisConfig(verify=VerifySettings(n=5), progress=False,
                                                                      traj_cache=traj_cache, reward_cache=rc))
    assert result.from_cache and result.passed and result.path == path and result.program == GOOD
    assert result.report is not None and result.report.passed

    # and the training scripts' startup call finds it without any backend
    program = reward_program(ENV, "state", reward_cache=rc)
    assert isinstance(program, RewardProgram) and program.subtasks == GOOD_SUBTASKS


@pytest.mark.slow
def test_manual_force_asks_again(tmp_path, traj_cache, capsys):
    """--force with --vlm manual asks for a new reply: the answer.md the earlier entry was made from is moved aside,
    not replayed as a "new" synthesis; the earlier entry stays in use until the new reply passes."""
    manual, rc = tmp_path / "manual", tmp_path / "rc"
    args = ("--vlm", "manual", "--manual-dir", str(manual))
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3
    [folder] = [p for p in manual.iterdir() if p.is_dir()]
    (folder / "answer.md").write_text(GOOD_ANSWER)
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 0
    [earlier] = _entries(rc)
    capsys.readouterr()

    assert _cli(*args, "--force", traj_cache=traj_cache, reward_cache=rc) == 3
    out = capsys.readouterr().out
    assert "already used" in out and "answer.used.md" in out
    assert not (folder / "answer.md").exists() and (folder / "answer.used.md").read_text() == GOOD_ANSWER
    [kept] = _entries(rc)  # set aside under a new name, still the entry training uses
    assert kept != earlier and reward_program(ENV, "state", reward_cache=rc).subtasks == GOOD_SUBTASKS

    other = GOOD_ANSWER.replace("pick up the object named in the mission", "pick up the mission's object")
    (folder / "answer.md").write_text(other)
    assert _cli(*args, "--force", traj_cache=traj_cache, reward_cache=rc) == 0
    assert len(_entries(rc)) == 2
    assert reward_program(ENV, "state", reward_cache=rc).subtasks[-1] == "pick up the mission's object"


def test_manual_api_raises_answer_needed(tmp_path, cfg):
    with pytest.raises(ManualAnswerNeeded) as ei:
        synthesize(ENV, "state", ManualBackend(tmp_path / "manual"), cfg())
    assert ei.value.folder.parent == tmp_path / "manual" and (ei.value.folder / "prompt.md").is_file()


# ------------------------------------------------------------------------------------------------ 2. openai


def _openai(url, **kw):
    kw.setdefault("model", "test-vlm")
    kw.setdefault("timeout", 10.0)
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff", 0.01)
    return make_backend("openai", base_url=url, **kw)


def test_openai_end_to_end_with_feedback_and_retry(cfg):
    script = [(200, completion(EVAL_ANSWER)), (500, {"error": {"message": "upstream overloaded"}}),
              (200, completion(GOOD_ANSWER))]
    with ChatServer(script) as srv:
        result = synthesize(ENV, "state", _openai(srv.url), cfg())
    assert result.passed and not result.from_cache and result.program == GOOD
    assert len(srv.requests) == 3  # round 1, round 2, round 2's retry after the 500
    assert "previous program failed" not in user_text(srv.requests[0])
    assert srv.requests[1] == srv.requests[2]
    feedback = user_text(srv.requests[1])
    assert "Your previous program failed verification" in feedback and 'eval("obs")' in feedback
    assert "'eval' is not available" in feedback
    entry = json.loads(result.path.read_text())
    assert entry == {**result.entry, "package_version": entry["package_version"], "updated": entry["updated"]}
    assert entry["backend"] == "openai" and entry["model"] == "test-vlm" and entry["complete"] is True
    assert [r["passed"] for r in entry["rounds"]] == [False, True]
    r1 = entry["rounds"][0]
    assert r1["answer"] == EVAL_ANSWER and "'eval' is not available" in r1["report"]["error"]
    assert r1["report"]["reasons"] == ["the program was rejected before running; fix the problems listed above"]


def test_openai_always_failing_before_any_round_saves_nothing(cfg, tmp_path):
    with ChatServer([(500, {"error": {"message": "internal"}})]) as srv:
        with pytest.raises(BackendError) as ei:
            synthesize(ENV, "state", _openai(srv.url), cfg())
    assert srv.url in str(ei.value) and "500" in str(ei.value)
    assert len(srv.requests) == 3  # the first attempt and two retries
    assert _entries(tmp_path / "rc") == []


@pytest.mark.slow
def test_openai_failure_after_a_round_saves_and_resumes(tmp_path, traj_cache, capsys, monkeypatch):
    monkeypatch.setattr(OpenAIBackend, "_sleep_for", lambda self, attempt, exc: 0.0)  # retries without waiting
    rc = tmp_path / "rc"
    with ChatServer([(200, completion(NO_BLOCK_ANSWER)), (500, {"error": {"message": "internal"}})]) as srv:
        args = ("--vlm", "openai", "--vlm-base-url", srv.url, "--vlm-model", "test-vlm", "--vlm-timeout", "10")
        assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 4
        err = capsys.readouterr().err
        assert "500" in err and srv.url in err and "re-run the same command to resume" in err
        assert len(srv.requests) == 1 + 5  # round 1, then round 2 with 4 retries
        partial = _only_entry(rc)
        assert partial["complete"] is False and partial["passed"] is False
        assert len(partial["rounds"]) == 1 and partial["rounds"][0]["answer"] == NO_BLOCK_ANSWER
        assert "no fenced code block" in partial["rounds"][0]["report"]["error"]
        round1_prompt = partial["rounds"][0]["prompt"]
        with pytest.raises(SynthesisError):  # an incomplete entry is never served as a verified program
            reward_program(ENV, "state", reward_cache=rc)

        # the endpoint recovers: the same command replays round 1 and asks only for round 2
        srv.script, srv.requests = [(200, completion(GOOD_ANSWER))], []
        assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 0
    assert len(srv.requests) == 1  # round 1 was not asked again
    asked = user_text(srv.requests[0])
    assert "Your previous program failed verification" in asked
    assert "(no program could be read from your answer)" in asked
    entry = _only_entry(rc)
    assert entry["rounds"][1]["prompt"] in asked
    assert entry["complete"] is True and entry["passed"] is True
    assert [r["answer"] for r in entry["rounds"]] == [NO_BLOCK_ANSWER, GOOD_ANSWER]
    assert entry["rounds"][0]["prompt"] == round1_prompt


# ------------------------------------------------------------------------------------------------ 3. hf


@pytest.mark.slow
def test_hf_tiny_model_garbage_is_no_crash(tiny_vlm_dir, cfg, traj_cache, tmp_path, monkeypatch):
    set_hf_offline(monkeypatch)
    backend = make_backend("hf", model=str(tiny_vlm_dir), max_tokens=16, temperature=0.0, device="cpu")
    result = synthesize(ENV, "state", backend, cfg(rounds=2))
    assert result.passed is False and not result.from_cache
    entry = json.loads(result.path.read_text())
    assert entry["backend"] == "hf" and entry["model"] == str(tiny_vlm_dir) and entry["complete"] is True
    assert len(entry["rounds"]) == 2 and entry["program"] == ""
    for r in entry["rounds"]:
        assert isinstance(r["answer"], str) and r["passed"] is False and r["program"] == ""
        assert r["report"]["reasons"] == ["the answer held no usable program"]
        assert "code block" in r["report"]["error"]
    assert "(no program could be read from your answer)" in entry["rounds"][1]["prompt"]

    with pytest.raises(SynthesisError) as ei:
        reward_program(ENV, "state", vlm="hf", model=str(tiny_vlm_dir), max_tokens=16, temperature=0.0,
                       device="cpu", reward_cache=tmp_path / "rc2",
                       synthesis=SynthesisConfig(rounds=2, verify=VerifySettings(n=5), progress=False,
                                                 traj_cache=traj_cache))
    msg = str(ei.value)
    assert "after 2 round(s)" in msg and str(tmp_path / "rc2") in msg and "no usable program" in msg


# ------------------------------------------------------------------------------------------------ 4. reward_program


def test_reward_program_without_backend_names_the_ways_out(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthesisError) as ei:
        reward_program(ENV, "state", vlm=None, reward_cache=empty)
    msg = str(ei.value)
    for way in ("--vlm openai", "--vlm hf", "--vlm manual"):
        assert way in msg
    assert ENV in msg and str(empty) in msg
    assert list(empty.iterdir()) == []


def test_reward_program_picks_the_newest_passing_entry(tmp_path, monkeypatch):
    rc = tmp_path / "rc"
    one = cache.write_entry(_minimal_entry(GOOD, True), cache.entry_path(ENV, "state", "1111", rc))
    program = reward_program(ENV, "state", reward_cache=rc)
    assert isinstance(program, RewardProgram)
    assert program.subtasks == GOOD_SUBTASKS and program.cache_path == one

    # an older passing entry whose name sorts last, and a newer failing one: the newest *passing* entry wins
    old = "SUBTASKS = ['an old program']\n\ndef subtask_1(obs, start):\n    return False\n"
    failing = "SUBTASKS = ['a failing program']\n\ndef subtask_1(obs, start):\n    return True\n"
    monkeypatch.setattr(cache, "now", lambda: "2001-01-01T00:00:00+00:00")
    cache.write_entry(_minimal_entry(old, True), cache.entry_path(ENV, "state", "ffff", rc))
    monkeypatch.setattr(cache, "now", lambda: "2099-01-01T00:00:00+00:00")
    cache.write_entry(_minimal_entry(failing, False), cache.entry_path(ENV, "state", "0000", rc))
    program = reward_program(ENV, "state", reward_cache=rc)
    assert program.subtasks == GOOD_SUBTASKS and program.cache_path == one

    monkeypatch.setattr(cache, "now", lambda: "2098-01-01T00:00:00+00:00")
    newer = "SUBTASKS = ['a newer program']\n\ndef subtask_1(obs, start):\n    return False\n"
    two = cache.write_entry(_minimal_entry(newer, True), cache.entry_path(ENV, "state", "0001", rc))
    program = reward_program(ENV, "state", reward_cache=rc)
    assert program.subtasks == ["a newer program"] and program.cache_path == two
    # other views and other envs are not mixed in
    with pytest.raises(SynthesisError):
        reward_program(ENV, "pixels", reward_cache=rc)
    with pytest.raises(SynthesisError):
        reward_program("MiniGrid-KeyCorridorS3R2-v0", "state", reward_cache=rc)


def test_reward_program_ignores_failing_entries(tmp_path):
    rc = tmp_path / "rc"
    cache.write_entry(_minimal_entry(GOOD, False), cache.entry_path(ENV, "state", "aaaa", rc))
    cache.write_entry(_minimal_entry(GOOD, False, complete=False), cache.entry_path(ENV, "state", "bbbb", rc))
    with pytest.raises(SynthesisError, match="--vlm manual"):
        reward_program(ENV, "state", reward_cache=rc)


# ------------------------------------------------------------------------------------------------ 5. answers


def test_answer_parsing_through_synthesis(cfg):
    wrong_names = "```python\n" + GOOD.replace("def subtask_", "def check_") + "```\n"
    two_blocks = f"```python\n{WRONG}```\nor maybe, better:\n```python\n{GOOD}```\n".replace("\n", "\r\n")
    backend = Scripted([NO_BLOCK_ANSWER, wrong_names, two_blocks])
    result = synthesize(ENV, "state", backend, cfg(rounds=3))
    rounds = result.entry["rounds"]
    assert [r["passed"] for r in rounds] == [False, False, True] and result.passed

    assert "no fenced code block" in rounds[0]["report"]["error"] and rounds[0]["program"] == ""
    assert rounds[0]["report"]["reasons"] == ["the answer held no usable program"]
    assert "missing function subtask_1(obs, start)" in rounds[1]["report"]["error"]
    assert "def check_1" in rounds[1]["program"]
    # the last complete block that parses wins (the model's second thought); line endings normalised
    assert rounds[2]["answer"] == two_blocks and rounds[2]["program"] == GOOD

    # what the model was told after each bad answer
    texts = [p.text for p in backend.prompts]
    assert "no fenced code block" in texts[1] and "(no program could be read from your answer)" in texts[1]
    assert "def check_1" in texts[2] and "missing function subtask_1" in texts[2]


def test_windows_line_endings_pass_in_one_round(cfg):
    crlf = GOOD_ANSWER.replace("\n", "\r\n")
    result = synthesize(ENV, "state", Scripted([crlf]), cfg(rounds=1))
    assert result.passed and len(result.entry["rounds"]) == 1 and result.program == GOOD


def test_all_rounds_failing_is_recorded_and_cached(cfg):
    backend = Scripted([WRONG_ANSWER, WRONG_ANSWER])
    result = synthesize(ENV, "state", backend, cfg(rounds=2))
    assert not result.passed and len(result.entry["rounds"]) == 2 and result.entry["complete"] is True
    assert result.report is not None and "FAILED" in result.report.to_text()
    # the same synthesis again is a cache hit (the model is not asked again); --force would redo it
    again = synthesize(ENV, "state", Exploding([]), cfg(rounds=2))
    assert again.from_cache and not again.passed and again.path == result.path
    with pytest.raises(AssertionError, match="must not be called"):
        synthesize(ENV, "state", Exploding([]), cfg(rounds=2, force=True))


@pytest.mark.slow
def test_force_keeps_the_earlier_entry(cfg, monkeypatch):
    """--force synthesizes again under the same key; the earlier entry is set aside, not overwritten."""
    monkeypatch.setattr(cache, "now", lambda: "2026-11-24T05:03:36+00:00")  # all in one second: the worst case
    first = synthesize(ENV, "state", Scripted([GOOD_ANSWER]), cfg(rounds=1))
    assert first.passed
    before = first.path.read_text()
    # a forced synthesis that fails: the earlier passing program is still there and still the one training uses
    forced = synthesize(ENV, "state", Scripted([WRONG_ANSWER]), cfg(rounds=1, force=True))
    assert not forced.passed and forced.path == first.path
    kept = [p for p in _entries(cfg().reward_cache) if p != first.path]
    assert len(kept) == 1 and kept[0].read_text() == before
    assert kept[0].name.startswith(first.path.stem + "__") and kept[0].suffix == ".json"
    found = cache.lookup(ENV, "state", cfg().reward_cache)
    assert found is not None and found[0] == kept[0] and found[1]["program"] == GOOD
    # forcing again keeps both earlier entries, even when they were created in the same second
    synthesize(ENV, "state", Scripted([GOOD_ANSWER]), cfg(rounds=1, force=True))
    assert len(_entries(cfg().reward_cache)) == 3
    assert cache.lookup(ENV, "state", cfg().reward_cache)[0] == first.path  # the newest passing entry


@pytest.mark.slow
def test_force_resumes_an_interrupted_synthesis(cfg):
    """An incomplete entry is resumed from its recorded answers, with or without --force (nothing is asked twice)."""
    class DownAfterOne(Scripted):
        def complete(self, prompt):
            if not self.answers:
                raise BackendError("endpoint down")
            return super().complete(prompt)

    with pytest.raises(BackendError):
        synthesize(ENV, "state", DownAfterOne([WRONG_ANSWER]), cfg(rounds=2))  # round 2 fails: saved, incomplete
    assert cache.read_entry(_entries(cfg().reward_cache)[0])["complete"] is False
    resumed = synthesize(ENV, "state", Scripted([GOOD_ANSWER]), cfg(rounds=2, force=True))
    assert resumed.passed and [r["answer"] for r in resumed.entry["rounds"]] == [WRONG_ANSWER, GOOD_ANSWER]
    assert len(_entries(cfg().reward_cache)) == 1


def test_cache_backend_replays_only(tmp_path, capsys):
    """`synthesize --vlm cache` (the CLI default) serves the newest verified entry and never calls a model."""
    rc, traj = tmp_path / "rc", tmp_path / "traj"
    assert _cli("--vlm", "cache", traj_cache=traj, reward_cache=rc) == 2
    err = capsys.readouterr().err
    for way in ("--vlm openai", "--vlm hf", "--vlm manual"):
        assert way in err
    assert not traj.exists()  # nothing collected for a replay that cannot happen
    path = cache.write_entry(_minimal_entry(GOOD, True), cache.entry_path(ENV, "state", "made-by-manual", rc))
    assert _cli("--vlm", "cache", traj_cache=traj, reward_cache=rc) == 0
    cap = capsys.readouterr()
    assert str(path) in cap.out and "cache hit" in cap.out + cap.err
    assert not traj.exists()


@pytest.mark.slow
def test_demonstrations_as_expert_source(tmp_path, cfg):
    """--expert-source demos: replayed demonstrations carry no frames, the prompt still gets its two images."""
    import numpy as np

    from cleanrl_vlmcar.trajectories import collect

    # 10 demonstrations: the first 5 (n) are shown and judge the program, the next 5 are its held-out set
    expert, _ = collect(ENV, "state", "expert", 10, 0, None, successful_only=True, frames=True, progress=False)
    length = max(len(t.actions) for t in expert)
    actions = np.zeros((len(expert), length), np.int64)
    for i, t in enumerate(expert):
        actions[i, : len(t.actions)] = t.actions
    demos = tmp_path / "demos.npz"
    np.savez(demos, seeds=np.array([t.seed for t in expert]), lengths=np.array([len(t.actions) for t in expert]),
             actions=actions)
    backend = Scripted([GOOD_ANSWER])
    result = synthesize(ENV, "state", backend, cfg(expert_source="demos", demos=str(demos)))
    assert result.passed and result.entry["expert"]["n"] == 5
    assert result.report.holdout is not None and result.report.holdout.expert_n == 5
    assert result.entry["verification"]["demos_sha256"] and result.entry["verification"]["holdout"] is True
    [prompt] = backend.prompts
    assert [caption for caption, _ in prompt.images] == ["initial frame", "goal frame (task completed)"]
    np.testing.assert_array_equal(prompt.images[0][1], expert[0].frames[0])
    np.testing.assert_array_equal(prompt.images[1][1], expert[0].frames[-1])


# ------------------------------------------------------------------------------------------------ 6. views


def test_unsupported_env_or_view_fails_before_any_work(tmp_path, traj_cache):
    rc = tmp_path / "rc"
    with pytest.raises(ViewError) as ei:
        reward_program("CartPole-v1", "state", reward_cache=rc)
    assert "CartPole-v1" in str(ei.value) and "choose one of: obs, pixels" in str(ei.value)
    assert not rc.exists()

    fresh = tmp_path / "traj"
    with pytest.raises(ViewError, match="no 'depth' view") as ei:
        synthesize(ENV, "depth", Exploding([]), SynthesisConfig(verify=VerifySettings(n=5), progress=False,
                                                                traj_cache=fresh, reward_cache=rc))
    assert "state" in str(ei.value) and "pixels" in str(ei.value)
    assert not fresh.exists() and not rc.exists()  # no trajectory collected, nothing cached

    # the view is checked before the cache is read: a corrupt cache does not hide the view error
    rc.mkdir()
    (rc / f"{ENV}__depth__x.json").write_text("{")
    with pytest.raises(ViewError):
        reward_program(ENV, "depth", reward_cache=rc)


@pytest.mark.slow
def test_manual_repeated_prompt_asks_for_a_new_answer(tmp_path, traj_cache, capsys):
    """The same wrong answer twice makes round 3's prompt equal round 2's: the manual backend must not replay the
    answer.md it already used in round 2, but ask again (exit 3), and the used reply is kept aside."""
    manual, rc = tmp_path / "manual", tmp_path / "rc"
    args = ("--vlm", "manual", "--manual-dir", str(manual))
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3
    [first] = [p for p in manual.iterdir() if p.is_dir()]
    (first / "answer.md").write_text(WRONG_ANSWER)
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3
    [second] = [p for p in manual.iterdir() if p.is_dir() and p != first]
    again = WRONG_ANSWER + "\nI checked it again; it is right.\n"  # the same wrong program, other words
    (second / "answer.md").write_text(again)
    capsys.readouterr()
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 3  # round 3 repeats round 2's prompt
    out = capsys.readouterr().out
    assert "repeats one already answered" in out and str(second) in out
    assert not (second / "answer.md").exists() and (second / "answer.used.md").read_text() == again
    partial = _only_entry(rc)
    assert [r["passed"] for r in partial["rounds"]] == [False, False]  # two rounds recorded, not three
    (second / "answer.md").write_text(GOOD_ANSWER)
    assert _cli(*args, traj_cache=traj_cache, reward_cache=rc) == 0
    [path] = _entries(rc)
    assert [r["passed"] for r in json.loads(path.read_text())["rounds"]] == [False, False, True]
