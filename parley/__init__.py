"""Parley: self-hosted chat with Claude. Settings, errors, tokens, wiring and the CLI live here."""

__version__ = "0.1.0"
