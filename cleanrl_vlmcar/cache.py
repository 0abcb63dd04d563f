"""The reward cache: one JSON file per synthesis under `reward_cache/`, committed to git.

A file is named `{env_id}__{view}__{key}.json`, where `key` is a content hash of the env id, view, prompt text,
images, backend, model and generation settings. It holds every round's prompt and raw answer, the final program,
its verification report and pass/fail. Files are written atomically (a temp file, then rename), so concurrent
runs never leave a broken file; a corrupt file is an error that names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import NoProgramError

#: the committed cache inside the repository; VLMCAR_REWARD_CACHE overrides it
DEFAULT_DIR = Path(os.environ.get("VLMCAR_REWARD_CACHE", Path(__file__).resolve().parents[1] / "reward_cache"))
REQUIRED = ("env_id", "view", "backend", "model", "rounds", "program", "passed", "report", "created")
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


class CacheError(NoProgramError):
    """A cache file that cannot be read, or no usable entry; the message names the file or the way out."""


def content_key(env_id: str, view: str, prompt_text: str, images: list[bytes], backend: str, model: str,
                settings: dict[str, Any]) -> str:
    """Content hash of everything that determines a synthesis."""
    h = hashlib.sha256()
    for part in (env_id, view, prompt_text, backend, model, json.dumps(settings, sort_keys=True, default=str)):
        h.update(part.encode())
        h.update(b"\0")
    for img in images:
        h.update(hashlib.sha256(img).digest())
    return h.hexdigest()[:16]


def entry_path(env_id: str, view: str, key: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or DEFAULT_DIR) / f"{env_id}__{view}__{key}.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_entry(entry: dict[str, Any], path: Path) -> Path:
    """Write an entry atomically (temp file in the same folder, then rename)."""
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"cache entry lacks {missing}")
    entry = {**entry, "package_version": __version__, "updated": now()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); a cache file is an ordinary file
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def set_aside(path: Path) -> Path:
    """Rename an entry to `{stem}__{created}.json` beside it, so that a new synthesis with the same key (`--force`)
    does not overwrite it. It stays an entry for (env id, view): training still uses the newest passing one."""
    entry = read_entry(path)
    stamp = re.sub(r"[^0-9T]", "", entry.get("created", ""))[:15] or "earlier"
    target, n = path.with_name(f"{path.stem}__{stamp}.json"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}__{stamp}-{n}.json")
    os.replace(path, target)
    return target


def read_entry(path: str | Path) -> dict[str, Any]:
    """Read one entry; CacheError naming the file when it is corrupt or incomplete."""
    path = Path(path)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(f"cache file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"cache file {path} is corrupt ({e}); delete it or restore it with `git checkout -- {path}`") \
            from None
    if not isinstance(entry, dict) or any(k not in entry for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(entry, dict) or k not in entry]
        raise CacheError(f"cache file {path} is incomplete (missing {missing}); delete it or restore it from git")
    if entry.get("program") is not None and not isinstance(entry["program"], str):
        raise CacheError(f"cache file {path} is corrupt (its program is a {type(entry['program']).__name__}, not "
                         "source text); delete it or restore it from git")
    return entry


def entries(env_id: str, view: str, cache_dir: str | Path | None = None) -> list[tuple[Path, dict]]:
    """All readable entries for (env id, view); corrupt files raise CacheError."""
    root = Path(cache_dir or DEFAULT_DIR)
    out = []
    for path in sorted(root.glob(f"{env_id}__{view}__*.json")):
        out.append((path, read_entry(path)))
    return out


def lookup(env_id: str, view: str, cache_dir: str | Path | None = None) -> tuple[Path, dict] | None:
    """The newest passing entry for (env id, view), or None."""
    passing = [(p, e) for p, e in entries(env_id, view, cache_dir) if e.get("passed")]
    if not passing:
        return None
    return max(passing, key=lambda pe: (pe[1].get("updated") or pe[1]["created"], _recency(pe[0], env_id, view),
                                        pe[0].name))


def _recency(path: Path, env_id: str, view: str) -> tuple[int, int]:
    """Order of entries written in the same second (timestamps have one-second resolution): an entry set aside by
    `set_aside` is older than the one now at its key's name, and `-n` marks the n-th one set aside in that second."""
    rest = path.stem[len(f"{env_id}__{view}__"):]
    if "__" not in rest:
        return (1, 0)
    m = re.search(r"-(\d+)$", rest)
    return (0, int(m.group(1)) if m else 1)
