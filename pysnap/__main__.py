"""``python -m pysnap``: the ``pysnap`` command."""

from .cli import run

if __name__ == "__main__":
    run()
