"""One error type for everything a user can get wrong; the CLI prints it as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input or machine, with the message we show as-is.

    `exit_code` 2 is for usage errors (unknown model, bad arguments), 1 for everything else.
    Messages name the file and the line or field, and never contain a secret's value.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
