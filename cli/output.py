"""Console plumbing: results on stdout (one JSON document with --json), everything else on stderr."""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, NoReturn

import typer
from typer.core import TyperCommand, TyperOption
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dpm_align.aligner_core.errors import DpmAlignError, from_environment

stderr = Console(stderr=True)


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr, printed as it is (no markup, no wrapping)."""
    stderr.print(f"warning: {message}", highlight=False, markup=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def handle_errors(command: Callable) -> Callable:
    """One-line ``error: ...`` on stderr and the error's exit code instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DpmAlignError as exc:
            _fail(exc)
        except KeyboardInterrupt:  # exit 130 = 128 + SIGINT, as a shell reports it; every write is atomic
            stderr.print("error: interrupted; no file was left half-written", highlight=False, markup=False)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # the machine's fault (out of memory), else a bug: one line unless DPM_ALIGN_DEBUG is set
            known = from_environment(exc)
            if known is not None:
                _fail(known)
            if os.environ.get("DPM_ALIGN_DEBUG"):
                raise
            stderr.print(f"error: internal error: {type(exc).__name__}: {exc} (set DPM_ALIGN_DEBUG=1 for a traceback)",
                         highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _fail(exc: DpmAlignError) -> NoReturn:
    message = " ".join(str(exc).splitlines())  # one line, whatever a file's contents put into it
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code) from None


@contextmanager
def progress_bar(description: str, quiet: bool = False):
    """Yields a ``progress(done, total, message)`` callback drawing a rich bar on stderr."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=stderr, transient=False) as bar:
        task = bar.add_task(description, total=None, note="")

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, note=message)

        yield update


class CompactCommand(TyperCommand):
    """A command whose ``--help`` reads at 80 columns: short metavars (INT, FLOAT, PATH, TEXT; none
    for flags) instead of ``<int range>`` or ``<list[str]>``, and a number range written into the
    description instead of the type column, so that the descriptions keep the width. (Typer checks
    the range from the option's declaration, not from the displayed ``min``/``max``; a test checks
    that the range is still enforced.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if not isinstance(param, TyperOption) or param.metavar is not None:
                continue
            param.metavar = "" if param.is_flag else _METAVARS.get(param.display_type(None).strip("<>"), "TEXT")
            low, high = getattr(param, "min", None), getattr(param, "max", None)
            if low is not None or high is not None:
                bounds = f"{low:g} to {high:g}" if low is not None and high is not None else (
                    f"at least {low:g}" if low is not None else f"at most {high:g}")
                param.help = f"{param.help or ''} ({bounds})".strip()
                param.min = param.max = None

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


_METAVARS = {"int": "INT", "int range": "INT", "list[int]": "INT", "float": "FLOAT", "float range": "FLOAT",
             "Path": "PATH", "path": "PATH"}
