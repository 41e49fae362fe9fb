"""Errors meant for the user, each one line: `UsageError` (bad command line, config key, value,
path or input file; the CLI exits 2), `WeightsError` (a weights file that is not one of the
supported networks; a `UsageError` too) and `TrainingError` (a run that cannot go on:
non-finite loss, out of memory, a lost peer; `p2p train` exits 1)."""


class UsageError(Exception):
    """Bad command line, config key, value or path. Message says what and how to fix it."""


class WeightsError(UsageError, ValueError):
    """Weights that fit none of the supported networks (or not the one they claim to be). A
    ValueError too, for code that loads state dicts without knowing about p2p's errors."""


class TrainingError(Exception):
    """A run that cannot go on. Message says why and where the last good checkpoint is."""
