"""``python -m adjustments.cli``: the same as the ``adjustments`` command."""

from . import main

main()
