"""Atomic file and directory writes (an output either appears complete or not at all), the one-line form of
a full or read-only disk, and exclusive locks that vanish with their process."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputExistsError(FileExistsError):
    """An output path already exists and would be overwritten."""


class DiskError(Exception):
    """A write failed because its disk is full or read-only (one line: the path and the errno)."""


class BusyError(Exception):
    """Another process holds the lock of a run directory."""


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def disk_error(e: BaseException, path: str | Path | None = None) -> DiskError | None:
    """`e` as a `DiskError` naming `path` (else the file the error names) when it is a full or read-only disk
    (ENOSPC, EDQUOT, EROFS), else None. safetensors' Rust errors carry the errno only in their message."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (found := re.search(r"\(os error (\d+)\)", str(e))):
        code = int(found.group(1))
    if code not in DISK_ERRNOS:
        return None
    where = path or getattr(e, "filename", None) or "a file"
    return DiskError(f"{where}: cannot write: {os.strerror(code)} ({errno.errorcode[code]}); "
                     f"{'free some space' if code != errno.EROFS else 'the file system is read-only'} or write "
                     "elsewhere (nothing was left half-written)")


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full or read-only disk under the block into a one-line `DiskError` naming `path`."""
    try:
        yield
    except DiskError:
        raise
    except Exception as e:
        if (error := disk_error(e, path)) is None:
            raise
        raise error from None


@contextmanager
def exclusive_lock(lock_path: str | Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (an OS file lock, `filelock`: it vanishes when its process dies).

    Held elsewhere: wait for it with `wait`, else `BusyError` at once."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise BusyError(f"{what} is in use by another codekd process (lock {lock_path}); wait for it to "
                            "finish") from None
        print(f"waiting for another codekd process that holds {what} (lock {lock_path})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def check_new_output(path: str | Path, force: bool = False, keep: str | Path | None = None,
                     replaceable: Callable[[Path], bool] = Path.is_file) -> Path:
    """Refuse an output path that exists, before any work starts.

    With `force`, an existing output that is `replaceable` (by default: a file) may be replaced (the caller
    writes atomically, so the old one goes only when the new one is complete). An output that is, or contains,
    `keep` (the input it is made from, e.g. a study directory) is refused even with `force`."""
    path = Path(path)
    if keep is not None and Path(keep).resolve().is_relative_to(path.resolve()):
        raise OutputExistsError(f"{path}: is or contains {keep}, which writing the output would destroy; choose "
                                "another --out")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError(f"{path}: already exists; choose another --out, or add --force to replace it")
        if not replaceable(path):
            raise OutputExistsError(f"{path}: already exists and is not an output of this command, so even --force "
                                    "does not replace it; choose another --out")
    return path


def output_of(*names: str, only: bool = False) -> Callable[[Path], bool]:
    """A `check_new_output` `replaceable` test for a command that writes a directory: `path` is a directory
    holding the files `names` (and, with `only`, nothing else), i.e. an earlier output of that command."""
    def test(path: Path) -> bool:
        if not path.is_dir() or path.is_symlink():
            return False
        files = {p.name for p in path.iterdir()}
        return set(names) <= files and (not only or files <= set(names))

    return test


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _plain(mode: int) -> int:
    """`mode` less the process umask: the permissions a plain `open`/`mkdir` would give (mkstemp and
    mkdtemp make their temporaries private, and the rename would keep that)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes `path` only if the block succeeds.

    With `replace`, an existing `path` is swapped out for the new one (and then deleted); without
    it, an existing `path` is refused before anything is written.
    """
    path = Path(path) if replace else check_new_output(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(_plain(0o777))
        try:
            yield tmp
            old = path.with_name(f".{path.name}.old")
            if path.exists() or path.is_symlink():
                _remove(old)
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces `path` only if the block succeeds."""
    path = Path(path)
    with disk_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _plain(0o666))
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file that codekd wrote (`codekd.json`, manifests, metrics), read by the rules of user files: bad
    bytes or JSON are a `DataError` naming the file and line (a model directory may come from anywhere)."""
    from codekd.data.text import parse_json, read_text

    return parse_json(read_text(Path(path)), path)


def process_alive(host: str | None, pid: int | None) -> bool:
    """Whether process `pid` on `host` may still be running; other hosts' processes are assumed to be."""
    if host != socket.gethostname() or not isinstance(pid, int) or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def is_main_process() -> bool:
    """Whether this is a launch's main process (rank 0 under `accelerate launch`/`torchrun`, or no launcher).

    Read from the environment, without starting any distributed state, so that consoles can be silenced
    on the other processes at import time; what to write is decided by `codekd.device.process_state`."""
    return os.environ.get("RANK", "0") == "0"
