"""The one exception type for failures a user can cause (bad input, missing files, mismatches)."""


class UserError(Exception):
    """A one-line, actionable message; the CLI and the pages show it as-is, never a traceback."""
