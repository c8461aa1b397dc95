"""The error types users see: bad input is a `UsageError` (a ValueError); everything else is a bug."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad user input (an argument, a file, a config): reported as one line, exit code 2 in the CLI."""


class ModelOutputError(UsageError):
    """The network returned something unusable (wrong shape, NaN or inf)."""


class CheckpointError(UsageError):
    """A checkpoint, run folder or model folder that cannot be used: missing, corrupt, incompatible, untrusted."""
