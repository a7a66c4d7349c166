"""snapcore: the compiled hot paths of pysnap (disk usage, mounts, record encoding).

It never imports pysnap: it is a set of fast, small, correct primitives.
"""
