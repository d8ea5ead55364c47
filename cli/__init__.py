"""The dpm-align command line (Typer); a thin layer over dpm_align.aligner_core."""
