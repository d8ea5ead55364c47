"""Atomic file writes: a temporary file in the target's directory, renamed over the target only
when it is complete, so that a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageError


@contextmanager
def atomic_file(path: Path, suffix: str, fix: str, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``, on any
    error it is removed. An ``OSError`` (a read-only directory, a full disk, ...) becomes one
    ``UsageError`` line: ``cannot write <path> (<reason>); <fix>``. ``make_parents``: create the
    missing directories above ``path``. A process killed while writing leaves ``.<name>.*<suffix>``
    beside ``path``, which no reader takes for ``path``."""
    path = Path(path)
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise cannot_write(path, exc, fix) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise cannot_write(path, exc, fix) from None
        raise


def cannot_write(path: Path, exc: OSError, fix: str) -> UsageError:
    return UsageError(f"cannot write {path} ({exc.strerror or exc}); {fix}")
