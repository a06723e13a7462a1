"""`python -m codekd` runs the CLI."""

from codekd.cli import main

main()
