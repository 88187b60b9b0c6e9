"""The one saturation rule: when a process, or the machine, counts as CPU-saturated.

Everything that flags saturation goes through here: the sampler during a run
(:class:`Counter`), a web-UI test's slice of the session's samples and a several-hosts
run's pulled samples (:func:`counts_from_rows`), a remote worker's own CPU count
(:func:`counts_from_intervals`), the web UI's live flag (:func:`saturated` over a window),
run.json's "cpu" and its warnings (:func:`cpu_summary`), and the resources chart's line.

Stdlib only: ``loadtests`` (which never loads pandas) reads it too.

The rule:

* a sample of a process is saturated at >= :data:`CPU_PERCENT` of one core (Locust itself
  warns at 90 %); the machine's at >= :data:`MACHINE_PERCENT` of all cores together;
* a process's first :data:`STARTUP_GRACE_S` are imports and set-up (Locust: ~1-2 s at
  100 % of a core), not load, and are not counted (a 5-s run would otherwise always be
  flagged);
* a process (or the machine) is saturated when at least :data:`SHARE` of at least
  :data:`MIN_SAMPLES` counted samples are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

CPU_PERCENT = 90.0
MACHINE_PERCENT = 95.0
SHARE = 0.2
MIN_SAMPLES = 3
STARTUP_GRACE_S = 3.0
MACHINE = "system"  # the component name of the whole machine's samples
LOADGEN = "loadgen"  # the load generator's component names start with it

# The warning of a run (or a web UI test, or the web UI's tab) whose load generator was
# CPU-saturated: one wording everywhere.  {names}: its processes; {span}: which samples.
LOADGEN_SATURATED = (f"load generator CPU-saturated ({{names}} at >= {CPU_PERCENT:g}% of a core "
                     f"in >= {SHARE:.0%} of {{span}}): its latencies and rates are not to be "
                     "trusted; add --workers or lower --users")
MACHINE_SATURATED = (f"the machine's CPU was saturated (all cores >= {MACHINE_PERCENT:g}% busy "
                     f"in >= {SHARE:.0%} of samples): the load generator, nginx and the backends "
                     "share it, so latencies include CPU queueing")
# the resources chart's label of the line at CPU_PERCENT
CHART_LABEL = f"{CPU_PERCENT:g}% of a core: load generator saturated above"

Counts = dict[str, list[int]]  # name -> [counted samples, saturated samples]


def is_saturated(name: str, cpu_percent: float) -> bool:
    """One sample: ``cpu_percent`` is of one core for a process, of every core for the machine."""
    return cpu_percent >= (MACHINE_PERCENT if is_machine(name) else CPU_PERCENT)


def is_machine(name: str) -> bool:
    # "system", or "controller-system" (the controller's machine) in a remote run's samples
    return name.endswith(MACHINE)


def saturated(counts: Counts, prefix: str = "") -> list[str]:
    """The names (starting with ``prefix``) that are saturated, from their counts."""
    return sorted(name for name, (n, sat) in counts.items()
                  if name.startswith(prefix) and n >= MIN_SAMPLES and sat / n >= SHARE)


class Counter:
    """Saturation counts kept as samples arrive (and, with ``window``, over the latest
    ``window`` samples of each name, for a live flag)."""

    def __init__(self, window: int = 0):
        self.counts: Counts = {}
        self.window = window
        self._recent: dict[str, deque] = {}

    def add(self, name: str, cpu_percent: float, age_s: float | None = None) -> None:
        """One sample; ``age_s``: how long the process had been running (None: the machine,
        or not known, counted always)."""
        if age_s is not None and age_s < STARTUP_GRACE_S:
            return
        hot = is_saturated(name, cpu_percent)
        n_sat = self.counts.setdefault(name, [0, 0])
        n_sat[0] += 1
        n_sat[1] += hot
        if self.window:
            self._recent.setdefault(name, deque(maxlen=self.window)).append(hot)

    def saturated(self, prefix: str = "") -> list[str]:
        return saturated(self.counts, prefix)

    def recent(self) -> list[str]:
        """Saturated over the last ``window`` samples only."""
        return saturated({name: [len(r), sum(r)] for name, r in self._recent.items()})


def counts_from_rows(rows: Iterable[list], interval: float = 1.0
                     ) -> tuple[Counts, dict[str, float]]:
    """Saturation counts and CPU seconds per component, recomputed from processes.csv rows
    (time, component, pid, cpu_percent, ...) as the sampler counts them: for a slice of a
    session's samples, or samples from several hosts.  A process's age is the time since
    its first row."""
    counter = Counter()
    cpu_seconds: dict[str, float] = {}
    first: dict[str, float] = {}
    for row in rows:
        t, name, cpu = float(row[0]), str(row[1]), float(row[3])
        if is_machine(name):
            counter.add(name, cpu)
            continue
        counter.add(name, cpu, t - first.setdefault(name, t))
        component = name.split("/")[0]
        cpu_seconds[component] = cpu_seconds.get(component, 0.0) + cpu / 100 * interval
    return counter.counts, cpu_seconds


def counts_from_intervals(rows: Iterable[dict]) -> tuple[Counts, dict[str, float],
                                                         dict[str, float]]:
    """Each Locust worker's CPU from the ``cpu_ms`` it counts per interval (counters.jsonl
    rows: source, t0, t1, counters): (worker -> counts, worker -> CPU seconds, worker ->
    seconds covered).  An interval's age is its start's, since the worker's first interval;
    a last partial interval (under half a second) is its shutdown and is not counted."""
    counter = Counter()
    seconds: dict[str, float] = {}
    span: dict[str, float] = {}
    first: dict[str, float] = {}
    for row in rows:
        cpu_ms = row.get("counters", {}).get("cpu_ms")
        t0, t1 = float(row.get("t0", 0)), float(row.get("t1", 0))
        if cpu_ms is None or t1 - t0 < 0.5:
            continue
        src = str(row.get("source", "?"))
        counter.add(src, cpu_ms / 1000 / (t1 - t0) * 100, t0 - first.setdefault(src, t0))
        seconds[src] = seconds.get(src, 0.0) + cpu_ms / 1000
        span[src] = span.get(src, 0.0) + (t1 - t0)
    return counter.counts, seconds, span


def cpu_summary(counts: Counts, cpu_seconds: dict[str, float]) -> tuple[dict, list[str]]:
    """run.json's "cpu" and its warnings."""
    warnings = []
    loadgen = saturated(counts, LOADGEN)
    if loadgen:
        warnings.append(LOADGEN_SATURATED.format(names=", ".join(loadgen), span="samples"))
    machine = [n for n in saturated(counts) if is_machine(n)]
    if machine:
        warnings.append(MACHINE_SATURATED)
    summary = {
        "machine_saturated": bool(machine),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu_seconds.items()},
        "saturated_share": {k: round(s / n, 3) for k, (n, s) in counts.items() if n},
        "loadgen_saturated": bool(loadgen),
    }
    return summary, warnings
