"""Errors with a user-facing one-line message and an exit code.

Every error the tool expects (bad input, missing files, mismatched artifacts) is raised as one
of these; the CLI prints ``error: <message>`` on stderr and exits with ``exit_code``.
"""

import re


class DpmAlignError(Exception):
    """A runtime failure the user can fix (exit code 1)."""

    exit_code = 1


class ArtifactError(DpmAlignError):
    """A tau artifact that parses but fails ``check_artifact`` (a NaN or out-of-range tau, a grid
    that does not match its schedule, an inconsistent verdict, ...): exit code 1, like every
    ``inspect --check`` failure."""

    exit_code = 1


class UsageError(DpmAlignError):
    """Invalid arguments or input files (exit code 2)."""

    exit_code = 2


class NotBetterError(DpmAlignError):
    """Fitted taus did not beat the plain sampler in self-validation (exit code 3)."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for
    one-line errors that quote a library's complaint."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OutOfMemoryError(DpmAlignError):
    """The GPU (or the host) ran out of memory (exit code 1); made by ``from_environment``."""

    exit_code = 1


OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")  # CUDA and MPS, the CPU allocator


def from_environment(exc: BaseException) -> DpmAlignError | None:
    """The one-line error for a fault of the machine rather than of the input, else None: an
    out-of-memory ``RuntimeError`` of torch (``torch.cuda.OutOfMemoryError``, MPS, and the CPU
    allocator's "DefaultCPUAllocator: can't allocate memory"); its message is shortened to the size
    that did not fit."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, RuntimeError) or not any(marker in text.lower() for marker in OOM_MARKERS):
        return None
    kind = "CUDA" if "cuda" in text.lower() else "MPS" if "mps" in text.lower() else "CPU"
    size = re.search(r"tried to allocate (\S+(?: [A-Za-z]+)?)", text, re.IGNORECASE)
    what = f", tried to allocate {size.group(1)}" if size else ""
    return OutOfMemoryError(f"out of memory ({kind}{what}); lower --batch-size (align: its teacher and verdict run "
                            "batches of at least 64; --gradient-checkpointing shrinks its fit), or use a smaller model "
                            "or another --device")
