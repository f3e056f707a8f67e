"""The exception the training library raises for bad options, data or checkpoints (the CLI prints it and exits 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A training or evaluation run cannot start as configured: unknown model, bad option, missing or mismatched
    data or checkpoint. The message says what is wrong and what was expected."""
