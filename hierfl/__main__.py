"""``python -m hierfl`` runs the command-line interface."""

from hierfl.cli import main

main()
