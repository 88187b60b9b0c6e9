"""Errors that become exit codes in one place (pollbench.cli)."""


class UserError(Exception):
    """Bad input or environment; the message is one line that says what to fix. Exit code 2."""


class RunFailed(Exception):
    """A run started but could not complete (a process died, nginx refused to start). Exit 3."""
