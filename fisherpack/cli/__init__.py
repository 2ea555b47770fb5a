"""The command line: thin subcommands over library calls (``fisherpack --help``)."""

from .main import main

__all__ = ["main"]
