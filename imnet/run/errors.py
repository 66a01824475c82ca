"""Bad input: the one exception family that the scripts turn into one paragraph on stderr and exit code 2.

Every module that checks what a user gave (flags, settings, data folders, checkpoints, devices) raises a
subclass of `UsageError` whose message says what is wrong and how to fix it; train.py, eval.py and the
``python -m imnet.*`` tools catch `UsageError` alone, print `message_of(error)` and exit with 2, before any
work is done where the check allows. Anything else is a bug and keeps its traceback.

Standard library only: flags are checked before torch is imported.
"""


class UsageError(Exception):
    """Bad input, not a bug: printed as one paragraph (no traceback), exit code 2."""


def message_of(error: BaseException) -> str:
    """The one paragraph to print for a bad-input error. An error raised inside a DataLoader worker reaches the
    main process with the worker's whole traceback in its message ("Caught DataError in DataLoader worker
    process 0. Original Traceback ..."); only its last line, the original message, is for the user."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.rstrip().rsplit("\n", 1)[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
