"""Errors meant for the user: the CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad command line, config key, value or path. Message says what and how to fix it."""
