"""`python -m transferlab ...` (what torchrun launches) is the CLI."""

from .cli import main

main()
