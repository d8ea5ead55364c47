"""The progress callback type: ``progress(done, total, message)``; the CLI draws it on stderr."""

from typing import Callable

Progress = Callable[[int, int, str], None]
