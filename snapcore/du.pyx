# cython: language_level=3
"""snapcore.du (being written)."""
