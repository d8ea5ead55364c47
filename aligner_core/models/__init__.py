"""Models: loading every checkpoint form, the eps wrapper (parameterization, conditioning),
the built-in networks, the exact Gaussian mixture and the embedded demo."""
