"""``python -m bastion`` is the ``bastion`` command."""

from .cli import main

main()
