"""The error every user-facing failure is turned into.

The CLI prints ``str(error)`` as one line and exits non-zero; anything else
escaping is a bug in scope-ebpf, not in the user's input.
"""


class ScopeError(Exception):
    """A failure with a message meant for the user (one line, says what to do)."""

    exit_code = 2
