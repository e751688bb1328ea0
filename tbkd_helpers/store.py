"""Artifacts on disk that survive a stopped run.

Every stage writes through these helpers: a file is written to a temporary name in the
same folder and moved into place with ``os.replace`` (atomic on one file system), so a
run killed mid-write leaves either the old file or no file, never half of one. A stage
that produces many files records them in a *manifest* written last; a later run trusts
the stage only when the manifest is present and says ``complete``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    >>> with atomic_path(tmp / "x.txt") as p:  # doctest: +SKIP
    ...     p.write_text("hello")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files; give the usual permissions (umask applies)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file, so a stopped run never leaves half a checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


_SHA_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's SHA-256, remembered per (path, inode, size, mtime) for this process: the
    stages ask for the same checkpoints' hashes again and again (3.9 s of a cached chapter
    04). A write changes the mtime, so a changed file is hashed afresh; a file written in
    the last two seconds is not remembered (a second write within the file system's
    timestamp granularity could otherwise keep the old mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        if len(_SHA_MEMO) > 4096:
            _SHA_MEMO.clear()
        _SHA_MEMO[key] = digest
    return digest


def settings_digest(settings: dict) -> str:
    """A short, stable fingerprint of a settings dict (to tell whether a cache is stale)."""
    blob = json.dumps(settings, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def manifest_complete(path: str | os.PathLike, settings: dict | None = None) -> bool:
    """True when the manifest at ``path`` exists, says complete, and (if given) has these settings."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        man = read_json(path)
    except ValueError:
        return False
    if not man.get("complete"):
        return False
    return settings is None or man.get("settings_digest") == settings_digest(settings)


def write_manifest(path: str | os.PathLike, settings: dict, **content: Any) -> Path:
    """Mark a stage complete: written last, after every file it lists is in place."""
    return write_json(path, {"complete": True, "settings": settings,
                             "settings_digest": settings_digest(settings), **content})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
