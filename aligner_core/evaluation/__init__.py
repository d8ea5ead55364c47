"""Evaluation: the reference solver, the paired verdict and its calibration, metrics and
feature-space distances."""
