"""The application layer's error for problems the user can fix (a missing file, a bad argument, a bundle that does
not fit): the command prints its message on one line, without a traceback, and exits with status 2."""

__all__ = ["UserError"]


class UserError(Exception):
    """A problem the user can fix; its message says what and where."""
