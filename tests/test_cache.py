"""The reward cache (cleanrl_vlmcar.cache): corrupt and incomplete entries are named, writes are atomic, entries set
aside keep their order."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from helpers_program import ENV
from helpers_program import minimal_entry as _minimal_entry

from cleanrl_vlmcar import cache
from cleanrl_vlmcar.__main__ import main
from cleanrl_vlmcar.cache import CacheError
from cleanrl_vlmcar.generate import reward_program

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("isolated_caches")]

ROOT = Path(__file__).resolve().parents[1]
GOOD = (ROOT / "examples" / "keycorridor_state.py").read_text()


def test_corrupt_cache_file_is_named(tmp_path, traj_cache, capsys):
    rc = tmp_path / "rc"
    cache.write_entry(_minimal_entry(GOOD, True), cache.entry_path(ENV, "state", "good", rc))
    bad = cache.entry_path(ENV, "state", "broken", rc)
    bad.write_text('{"env_id": "MiniGrid-KeyCorridorS3R1-v0", "view": ')
    with pytest.raises(CacheError) as ei:
        cache.lookup(ENV, "state", rc)
    assert str(bad) in str(ei.value) and "corrupt" in str(ei.value)
    with pytest.raises(CacheError, match="broken"):
        reward_program(ENV, "state", reward_cache=rc)
    assert main(["verify", "--env-id", ENV, "--reward-cache", str(rc), "--n", "5",
                 "--cache-dir", str(traj_cache)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "corrupt" in err
    # a binary file is corrupt as well, not a crash
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CacheError, match="corrupt"):
        cache.read_entry(bad)
    # valid JSON whose program is not text: corrupt too (bad input, exit 2), not a failed program
    entry = _minimal_entry(GOOD, True)
    entry["program"] = 42
    bad.write_text(json.dumps(entry))
    with pytest.raises(CacheError, match="not source text"):
        cache.read_entry(bad)


def test_incomplete_cache_file_is_named(tmp_path):
    rc = tmp_path / "rc"
    path = cache.entry_path(ENV, "state", "partial", rc)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"env_id": ENV, "view": "state", "complete": False, "rounds": []}))
    with pytest.raises(CacheError) as ei:
        cache.read_entry(path)
    msg = str(ei.value)
    assert str(path) in msg and "incomplete" in msg and "program" in msg and "passed" in msg
    with pytest.raises(CacheError, match="partial"):
        reward_program(ENV, "state", reward_cache=rc)
    path.write_text("[1, 2, 3]")  # valid JSON, not an entry
    with pytest.raises(CacheError, match="incomplete"):
        cache.read_entry(path)
    with pytest.raises(CacheError, match="does not exist"):
        cache.read_entry(tmp_path / "nope.json")


def test_write_entry_is_atomic(tmp_path):
    rc = tmp_path / "rc"
    path = cache.entry_path(ENV, "state", "k", rc)
    cache.write_entry(_minimal_entry(GOOD, True), path)
    assert [p.name for p in rc.iterdir()] == [path.name]  # no temp file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600
    before = path.read_bytes()
    entry = json.loads(before)
    assert entry["program"] == GOOD and entry["package_version"] and entry["updated"]

    with pytest.raises(TypeError):  # json.dump fails half-way: the old file stays, the temp file is removed
        cache.write_entry(_minimal_entry("SUBTASKS = []\n", True, extra={"not json": object()}), path)
    assert path.read_bytes() == before
    assert [p.name for p in rc.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="program"):
        cache.write_entry({"env_id": ENV}, path)
    assert path.read_bytes() == before

    # concurrent writers never leave a reader with a partial file
    errors: list[Exception] = []
    stop = threading.Event()

    def writer(i):
        for j in range(40):
            cache.write_entry(_minimal_entry(GOOD * (1 + (i + j) % 3), True), path)

    def reader():
        while not stop.is_set():
            try:
                cache.read_entry(path)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert [p.name for p in rc.iterdir()] == [path.name]


def test_set_aside_entries_of_one_second_keep_their_order(tmp_path, monkeypatch):
    """Eleven forced syntheses under one key in one second: each is set aside in turn, and lookup still knows which
    is newest (the one at the key's own name, then `-11` over `-10` over `-2` over the unnumbered one)."""
    rc = tmp_path / "rc"
    monkeypatch.setattr(cache, "now", lambda: "2026-11-24T05:03:36+00:00")
    path = cache.entry_path(ENV, "state", "same", rc)
    for i in range(12):
        if path.exists():
            cache.set_aside(path)
        cache.write_entry(_minimal_entry(f"SUBTASKS = ['v{i}']\n", True), path)
        assert cache.lookup(ENV, "state", rc)[1]["program"] == f"SUBTASKS = ['v{i}']\n"
    assert len(list(rc.glob("*.json"))) == 12
    path.unlink()  # without the newest, the last one set aside (`-11`) is the newest
    assert cache.lookup(ENV, "state", rc)[0].name.endswith("__20261124T050336-11.json")
    assert cache.lookup(ENV, "state", rc)[1]["program"] == "SUBTASKS = ['v10']\n"
