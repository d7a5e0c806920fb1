"""ledger: turn storyboard JSON files into generated videos, reliably and in bulk."""

__version__ = "0.1.0"
