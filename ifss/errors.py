"""The one exception type for bad input: its message is a sentence naming the thing and the fix."""


class IfssError(Exception):
    """User-facing error: the CLI prints its message alone and exits non-zero."""
