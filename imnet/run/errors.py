"""UsageError: bad input, printed as one paragraph (no traceback), exit code 2; anything else is a bug.
Standard library only: flags are checked before torch is imported."""


class UsageError(Exception):
    pass


def message_of(error: BaseException) -> str:
    """The paragraph to print: of a DataLoader worker's error (its traceback in the message), the last line."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.rstrip().rsplit("\n", 1)[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
