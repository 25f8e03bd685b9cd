"""``python -m clustrix`` runs the command line."""

from .cli import main

main(prog_name="clustrix")
