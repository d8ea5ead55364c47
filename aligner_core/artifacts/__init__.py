"""The tau artifact: its pydantic schema and cache, the one check run before every use, exports,
the inspect table and plots."""
