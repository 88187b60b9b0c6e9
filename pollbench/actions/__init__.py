"""What each command does: run, up, ui, report, compare, check, sweep.  Called by
:mod:`pollbench.cli`; uses :mod:`pollbench.stack`, :mod:`pollbench.records` and :mod:`analysis`."""
