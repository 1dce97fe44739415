"""One exception type for errors a user can cause: the CLI prints its message as one line and exits 1
(2 is left to usage errors: unknown option, missing argument)."""


class DiffdiscError(Exception):
    """Bad input or a missing resource; the message must tell the user what to do."""
