"""dpm-align core engine: schedules, samplers with timestep overrides, tau fitting, artifacts.

This package never imports ``dpm_align.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpm-align")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    # Imported on first use only: diffusers is slow to import and not needed by the CLI's core paths.
    if name == "AlignedScheduler":
        from .sampling.diffusers_scheduler import AlignedScheduler

        return AlignedScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
