"""The command line's output folder: checked before training, written all at once at the end.

``prepare_output`` runs before any training: the folder must be creatable and writable, and
none of the files the command will write may exist as anything but a regular file, so a bad
``--out`` fails in a second, not after the run. ``staged_output`` is where the files are then
written: a temporary folder inside the output folder (same file system), whose files are
renamed into place one ``os.replace`` each with Ctrl-C (SIGINT) held back for those few
renames, so an interrupted command leaves either the previous run's files or the new ones,
never a mix; the temporary folder is removed if anything fails before.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["prepare_output", "staged_output"]

_STAGE_PREFIX = ".slimfast-partial-"


def prepare_output(out: str | os.PathLike[str], names: Sequence[str], option: str = "--out") -> Path:
    """Create ``out`` (and parents) and check that ``names`` can be written into it; ValueError
    naming the path and what is wrong otherwise."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{option} {path}: a part of the path is a file, not a folder") from None
    except NotADirectoryError:
        raise ValueError(f"{option} {path}: a part of the path is a file, not a folder") from None
    except PermissionError:
        raise ValueError(f"{option} {path}: no permission to create this folder") from None
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot create this folder ({exc.strerror or exc})") from None
    for name in names:
        target = path / name
        if target.exists() and not target.is_file():
            raise ValueError(f"{option} {path}: {name} exists there and is not a file (a folder?); it would be "
                             "replaced by this command's output")
    try:   # a real write: permission bits, read-only mounts and quotas all show here
        probe = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=path))
        probe.rmdir()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write into this folder ({exc.strerror or exc})") from None
    return path


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Defer SIGINT (Ctrl-C) until the block ends; a no-op off the main thread or without
    ``pthread_sigmask``."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a temporary folder inside ``out``; when the block ends normally, move every file in
    it to ``out`` (replacing files of the same name) with Ctrl-C held back, then remove it."""
    stage = Path(tempfile.mkdtemp(prefix=_STAGE_PREFIX, dir=out))
    try:
        yield stage
        files = sorted(p for p in stage.iterdir() if p.is_file())
        with _sigint_held():
            for f in files:
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
