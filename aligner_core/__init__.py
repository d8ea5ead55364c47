"""dpm-align core engine: schedules, samplers with timestep overrides, tau fitting, artifacts.

This package never imports ``dpm_align.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpm-align")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
