"""``python -m hbl_edge`` is the ``hbl-edge`` command (``torchrun ... -m hbl_edge search`` too)."""

from hbl_edge.cli import main

if __name__ == "__main__":
    main()
