"""The ``onejump`` command line. Every command prints one line and exits non-zero on bad input."""

from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
