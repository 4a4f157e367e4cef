"""User-facing errors.

A `UserError` is something the user can fix (a bad file, flag or model path). The CLI prints its message as one
line starting `error:` and exits with status 2, without a traceback unless `--debug` is given.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""

    exit_code = 2


class ReportedError(UserError):
    """A failure that other processes (the training workers) have already reported; only their exit status is passed on."""

    def __init__(self, exit_code: int):
        super().__init__(f"a training process failed with exit status {exit_code}")
        self.exit_code = exit_code
