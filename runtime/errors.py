"""The one base class for mistakes a user can fix: the CLI prints them in one line (exit 2), no traceback."""


class UserError(Exception):
    def __init__(self, message: str = "", hint: str = ""):
        super().__init__(message)
        self.hint = hint
