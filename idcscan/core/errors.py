"""Errors that carry a cause a user can act on. The CLI prints them as one line, the API as problem+json."""


class IdcscanError(Exception):
    """Base of idcscan's own errors."""


class InvalidInput(IdcscanError):
    """The input can never be processed as given (wrong format, no pixel size, too large, ...).

    `code` is a stable, machine-readable name of the cause (used as the problem+json type).
    """

    def __init__(self, message: str, code: str = "invalid-input") -> None:
        super().__init__(message)
        self.code = code
