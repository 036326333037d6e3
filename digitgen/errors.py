"""One family for the errors digitgen raises on purpose: each message says what was wrong and what to do."""


class DigitgenError(Exception):
    """Base of every error whose message is written for the user; the CLI prints it as one line, no traceback."""
