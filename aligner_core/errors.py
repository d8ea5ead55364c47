"""Errors with a user-facing one-line message and an exit code.

Every error the tool expects (bad input, missing files, mismatched artifacts) is raised as one
of these; the CLI prints ``error: <message>`` on stderr and exits with ``exit_code``.
"""


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
