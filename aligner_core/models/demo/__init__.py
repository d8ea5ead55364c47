"""Package data: the embedded demo model (weights + config)."""
