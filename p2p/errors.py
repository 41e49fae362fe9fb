"""Errors meant for the user, each one line: `UsageError` (bad command line, config key, value,
path or input file; the CLI exits 2), `WeightsError` (a weights file that is not one of the
supported networks; a `UsageError` too) and `TrainingError` (a run that cannot go on:
non-finite loss, out of memory, a lost peer; `p2p train` exits 1).

The faults a cluster throws have their own classes, so that callers can tell them apart:
`CheckpointError` (a checkpoint that is missing, unreadable, corrupt or not a checkpoint; a
UsageError, so every command answers it with one line and exit 2), `WriteError` (a write that
failed, a full disk or an I/O error; the previous file is intact), and `PeerLostError` (another
process of the job died or stopped answering)."""


class UsageError(Exception):
    """Bad command line, config key, value or path. Message says what and how to fix it."""


class TrainingError(Exception):
    """A run that cannot go on. Message says why and where the last good checkpoint is."""


class CheckpointError(UsageError, ValueError):
    """A checkpoint file that cannot be used: missing, truncated, corrupt (its checksum does not
    match), or not a checkpoint at all. `path` is the file. A ValueError too, which is what
    `load_generator` raised for a state dict that does not fit before this class existed."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class WriteError(OSError):
    """A file could not be written (no space left, quota, I/O error). The message names the path,
    the bytes the file needed and the bytes free; the previous version of the file is intact and
    no temporary file is left behind."""

    def __init__(self, message: str, path: str = "", needed: int | None = None, free: int | None = None):
        super().__init__(message)
        self.path, self.needed, self.free = path, needed, free

    def __str__(self) -> str:
        return self.args[0]


class PeerLostError(TrainingError):
    """Another process of a multi-process job died or stopped answering in a collective: the run
    can continue from its last checkpoint once the job is restarted (a Slurm job may requeue)."""


class WeightsError(CheckpointError):
    """Weights that fit none of the supported networks (or not the one they claim to be): a
    CheckpointError, so one `except CheckpointError` answers every file p2p cannot load."""
