"""Sampling: noise schedules, time grids, the samplers (plain functions over an eps callable and
an explicit grid), Analytic-DPM's Gamma_t and the diffusers scheduler."""
