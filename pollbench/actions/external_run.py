"""``pollbench run --target URL`` without ``--agent``: a service that is already running,
measured as a client sees it.

    code = run_external("http://127.0.0.1:9000", LoadSpec(protocol="nchan", users=500))

Nothing is started but the load generator.  The target is asked once, in its protocol,
before the load starts (:func:`pollbench.stack.external.probe_target`); a target that does
not answer, or does not speak the protocol, is refused in one line.  The run measures
delivery latency, loss, duplicates and order (the publisher's stamps), client-side
connection reuse and the load generator's own cost; every figure of the stack (its CPU,
memory, cost per delivery, upstream reuse, what ran out first on its side) reads "not
measured", with the reason, in run.json, the summary, the report and ``compare``.
"""

from __future__ import annotations

from pathlib import Path

from pollbench.actions.runloop import Side, base_parameters, drive, run_label
from pollbench.log import log
from pollbench.paths import CHECKOUT
from pollbench.records.rundir import new_run_dir, write_json_atomic
from pollbench.records.runinfo import git_info, host_info, machine_fingerprint, software_versions
from pollbench.records.runrecord import record_start
from pollbench.stack import disk
from pollbench.stack.external import NOT_MEASURED, probe_target
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.processes import ChildGroup, open_files_line, raise_open_files
from pollbench.stack.remote import check_http_url

# the load's bound on --poll-timeout: the target's own hold limit is not known here
MAX_POLL_TIMEOUT_S = 3600.0


class ExternalSide(Side):
    """A target that is already running: nothing to start, check or stop but Locust."""

    def __init__(self, url: str):
        self.url = url
        self.group = ChildGroup()

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.group.children if c.alive()}


def external_record(url: str, load: LoadSpec) -> dict:
    """What run.json says of a target pollbench did not start: where, which protocol, and
    why none of its own figures are measured."""
    software = software_versions(None)
    return {"stack": {"external": True, "url": url, "protocol": load.protocol,
                      "not_measured": NOT_MEASURED},
            "software": software, "host": host_info(), "machine": machine_fingerprint(software),
            "git": git_info(CHECKOUT)}


def run_external(url: str, load: LoadSpec, out: Path | None = None, report: bool = True,
                 max_error_rate: float | None = None,
                 min_free_disk: int = disk.DEFAULT_FLOOR,
                 thresholds: dict[str, float] | None = None) -> int:
    url = check_http_url("--target", url)
    load.validate(MAX_POLL_TIMEOUT_S)
    if load.faults:
        from pollbench.errors import UserError

        raise UserError("--fault needs a stack pollbench starts (or a target host's agent): "
                        f"{url} is a service it did not start")
    probe_target(url, load.protocol)
    log.info(open_files_line(raise_open_files()))
    label = run_label(load, "external")
    run_dir = new_run_dir(label, out)
    record = record_start("run", base_parameters(load), external_record(url, load))
    write_json_atomic(run_dir / "run.json", record)
    log.info(f"pollbench run: {label} against {url} ({load.protocol}; not started by "
             f"pollbench: its own figures are not measured), {load.duration_s:g} s -> "
             f"{run_dir}")
    return drive(ExternalSide(url), load, run_dir, record, report, "run", max_error_rate,
                 disk.DiskWatch(run_dir, min_free_disk), thresholds)
