"""User-facing errors: one line that names the problem, one that names the fix.

Anything raised as a :class:`UserError` is the user's to correct (a flag, a path, a file); the CLI
prints it without a traceback and exits with code 2. Every other exception is our bug.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input. ``fix`` tells them what to do instead."""

    exit_code = 2

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class UnknownName(UserError):
    """A name that is not in a registry (scheme, format, template, dataset ...)."""


class ModelNotFound(UserError):
    """The model path does not exist, lacks files, or the hub cannot be reached."""


class IncompatibleScheme(UserError):
    """The scheme cannot be stored by a requested export format."""


class OutputExists(UserError):
    """The output folder exists and ``--force`` was not given."""


class DatasetError(UserError):
    """A calibration source is missing, empty or malformed."""
