# cython: language_level=3
"""snapcore.keys (being written)."""
