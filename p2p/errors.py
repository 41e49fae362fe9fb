"""Errors meant for the user, each one line: `UsageError` (bad command line, config key, value,
path or input file; the CLI exits 2) and `TrainingError` (a run that cannot go on: non-finite
loss, out of memory, a lost peer; `p2p train` exits 1)."""


class UsageError(Exception):
    """Bad command line, config key, value or path. Message says what and how to fix it."""


class TrainingError(Exception):
    """A run that cannot go on. Message says why and where the last good checkpoint is."""
