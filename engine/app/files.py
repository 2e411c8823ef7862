"""What the commands write and read: whole files or nothing, strict JSON, content fingerprints, a run lock.

- write_atomically: a temporary file (named by this process, so two writers never share one),
  flushed, fsynced and renamed over the target: a reader sees the old file or the new one.
- to_json: json.dumps that refuses NaN and Infinity (strict parsers reject them, and fastig never
  reports a non-finite result as one).
- fingerprint: the SHA-256 of a file's bytes, or of a folder's files (names and bytes), so that a
  resumed run recognises the same data or model under another path and refuses a changed one.
- RunLock: an exclusive lock on a run folder for the run's life (flock: the kernel drops it when the
  process dies, so a lock left by a killed run is taken over, with a message naming its process).
"""

import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import DataError


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (OSError on failure, the old file untouched)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def to_json(value, **kwargs) -> str:
    """Strict JSON: NaN and Infinity are an error, never written."""
    return json.dumps(value, allow_nan=False, **kwargs)


def output_folder(path: Path, what: str) -> Path:
    """`path` as a folder that exists and takes files, or a DataError saying why not (before any work)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fastig-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise DataError(f"{what} {str(path)!r} cannot take files: {err.strerror or err}") from err
    return path


def fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (their paths relative to it, and their bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class RunLock:
    """An exclusive lock on `folder` (its file `.lock`) while the `with` block runs.

    Refused with a DataError naming the holder when another live process holds it; a lock file
    left by a process that no longer runs is taken over, and `taken_over` names that process.
    """

    def __init__(self, folder: Path):
        self.path, self.file, self.taken_over = folder / ".lock", None, None

    def __enter__(self) -> "RunLock":
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            self.file.close()
            raise DataError(f"{str(self.path.parent)!r} is in use by another fastig run ({holder}); wait for it to "
                            "end or stop it, or use another --out") from None
        self.taken_over = self._holder() or None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
        self.file.flush()
        return self

    def _holder(self) -> str:
        self.file.seek(0)
        return self.file.read().strip()

    def __exit__(self, *exc_info) -> None:
        self.file.seek(0)
        self.file.truncate()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
