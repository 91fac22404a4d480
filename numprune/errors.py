"""The one error type that the CLI turns into a single readable line."""


class NumpruneError(Exception):
    """Bad input or an unrecoverable condition the user can fix (message says what and how)."""
