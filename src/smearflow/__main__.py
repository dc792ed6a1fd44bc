"""``python -m smearflow`` runs the command line."""

from smearflow.cli import main

main()
