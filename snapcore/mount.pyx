# cython: language_level=3
"""snapcore.mount (being written)."""
