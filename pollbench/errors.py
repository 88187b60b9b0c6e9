"""Errors that become exit codes in one place (pollbench.cli)."""


class UserError(Exception):
    """Bad input or environment; the message is one line that says what to fix. Exit code 2."""


class RunFailed(Exception):
    """A run started but could not complete (a process died, nginx refused to start). Exit 3."""


def check_number(name: str, value: float, lo: float | None = None, hi: float | None = None,
                 *, above: bool = False) -> None:
    """The one check for a number a user gives: finite and within [lo, hi] (``above``: > lo).

    Raises UserError naming the option, the range and the value, e.g.
    ``--publish-rate must be a finite number from 0 to 100000 (it is nan)``."""
    ok = value == value and value not in (float("inf"), float("-inf"))  # NaN != NaN
    if ok and lo is not None:
        ok = value > lo if above else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        if lo is not None and hi is not None:
            what = f" from {lo:g} to {hi:g}" if not above else f" above {lo:g} and at most {hi:g}"
        elif lo is not None:
            what = f" above {lo:g}" if above else f", {lo:g} or more"
        else:
            what = f" at most {hi:g}" if hi is not None else ""
        shown = value if isinstance(value, int) else f"{value:g}"
        raise UserError(f"{name} must be a finite number{what} (it is {shown})")
