"""The lab's one error type: its message says what went wrong and what to do."""


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""
