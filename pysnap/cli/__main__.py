"""``python -m pysnap.cli``: the ``pysnap`` command (as ``python -m pysnap``)."""

from . import run

if __name__ == "__main__":
    run()
