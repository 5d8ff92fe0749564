"""``python -m finechain`` = the ``finechain`` command."""

from finechain.cli.app import main

main()
