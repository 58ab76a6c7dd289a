"""``python -m brainrt.cli``: the ``brainrt`` command."""

from . import main

main()
