"""python -m dpm_align.cli"""
from .main import run

run()
