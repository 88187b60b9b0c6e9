"""A run's checks in one place: everything that can be refused before a process starts.

    checked = preflight(spec, load, out=out, min_free_disk=floor, claim=True)
    try:
        ... checked.resolved, checked.faults, checked.warnings ...
    finally:
        checked.release()

Every command that starts a stack calls it, so a check added here holds for all of them:
``run`` (the stack, the load, its faults, the disk, the output folder), ``sweep`` (each
cell, before the first starts), ``check`` (its CI stack and load), ``ui`` (the start form's
load), ``up`` (the stack alone) and the agent (a controller's stack and faults).  The
first problem is raised as one :class:`~pollbench.errors.UserError` line; what is probably a
mistake but may be meant comes back as warnings (logged, and kept in run.json).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from pollbench.errors import UserError
from pollbench.log import log
from pollbench.paths import results_dir
from pollbench.stack import capacity, disk, net, nginx_config
from pollbench.stack.faults import BACKEND_ACTIONS, Fault
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.processes import open_files_line, raise_open_files
from pollbench.stack.spec import ResolvedStack, StackSpec

__all__ = ["Checked", "check_fault_targets", "preflight"]


@dataclass
class Checked:
    """A stack and load that passed every check: resolved (ports held with ``claim``)."""

    resolved: ResolvedStack
    load: LoadSpec | None
    faults: list[Fault] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def release(self) -> None:
        self.resolved.release()


def preflight(spec: StackSpec, load: LoadSpec | None = None, *, faults: Sequence[Fault] = (),
              out: Path | None = None, min_free_disk: int | None = None,
              check_ports: bool = True, claim: bool = False, warn: bool = True,
              fit_access_log: bool = True) -> Checked:
    """Resolve ``spec`` (its knobs, nginx, ports) and check ``load`` against it: the load's
    own bounds, that the target holds it, its faults' and ``faults``' targets, and, with
    ``min_free_disk``, that its estimated bytes fit on the disk of ``out`` (default the
    results folder).  ``warn``: log the warnings as well as return them.  ``fit_access_log``:
    choose nginx's access-log mode for the load's length (a run; not a UI session, which has
    none)."""
    port_range = net.local_port_range()
    open_files = raise_open_files()  # before any limit is judged; the children inherit it
    if warn:
        log.info(open_files_line(open_files))
    if load is not None:
        if fit_access_log:
            spec = with_access_log(spec, load)
        spec = with_upstream_sources(spec, load, port_range)
        spec = with_nginx_workers(spec, load)
        asked_workers = load.workers
        load = with_locust_processes(load)
    resolved = spec.resolve(check_ports=check_ports, claim=claim)  # the stack's own knobs first
    try:
        warnings: list[str] = []
        every_fault = list(faults)
        if load is not None:
            load.validate(spec.max_hold_s)  # (the poll timeout is bounded by the stack's hold)
            load = with_sources(load, resolved.url, port_range)
            check_sources(load.sources())
            warnings = load_fits(resolved, load, port_range,
                                 workers_chosen=load.workers != asked_workers)
            every_fault += load.fault_schedule()
        check_fault_targets(resolved, every_fault)
        if load is not None and min_free_disk is not None:
            check_disk(resolved, load, out, min_free_disk)
        if out is not None:
            nginx_config.safe_path(Path(out).resolve() / "nginx")  # refused before it is made
    except BaseException:
        resolved.release()
        raise
    if warn:
        for w in warnings:
            log.warning(w)
    return Checked(resolved, load, every_fault, warnings)


def check_fault_targets(resolved: ResolvedStack, faults: list[Fault]) -> None:
    """Backends that exist, reload profiles that load with the same backend count."""
    backends = resolved.settings["backends"]
    for f in faults:
        if f.target == "redis":
            if resolved.redis_port is None:
                raise UserError(f"--fault {f.text()}: this stack starts no Redis (it needs "
                                "--state redis, and no --redis URL)")
            continue
        if f.action in BACKEND_ACTIONS and f.backend >= backends:
            raise UserError(f"--fault {f.text()}: there is no {f.target} (the stack has "
                            f"{backends} backends: backend-0 to backend-{backends - 1})")
        if f.action == "reload" and f.target:
            other = replace(resolved.spec, profile=f.target).settings()
            if other["backends"] != backends:
                raise UserError(f"--fault {f.text()}: profile {f.target} has "
                                f"{other['backends']} backends, the stack {backends}")


def with_upstream_sources(spec: StackSpec, load: LoadSpec,
                          port_range: tuple[int, int]) -> StackSpec:
    """The spec with nginx's upstream source addresses fixed: the user's or the profile's,
    else as many as keep the busiest backend's held polls within
    :data:`capacity.CONNECT_SHARE` of each address's ports (one, the kernel's choice, for
    all but the largest loads)."""
    settings = spec.settings()
    if settings.get("upstream_sources") is not None:
        return spec
    per_backend = capacity.polls_per_backend(settings, spec.state_name(), load,
                                             spec.backend_port)
    need = capacity.sources_to_use(per_backend, port_range)
    if need <= 1:
        return spec
    need = min(need, capacity.MAX_LOOPBACK_SOURCES)
    log.info(f"about {per_backend:,} held polls per backend would fill more than "
             f"{capacity.CONNECT_SHARE:.0%} of one address's ports (ip_local_port_range "
             f"{port_range[0]}-{port_range[1]}; beyond that every connect() searches them): "
             f"nginx's connections to the backends spread over 127.0.0.1-127.0.0.{need} "
             f"(upstream_sources = {need})")
    return replace(spec, nginx_overrides={**spec.nginx_overrides, "upstream_sources": need})


def with_locust_processes(load: LoadSpec) -> LoadSpec:
    """The load with as many Locust processes as its users' sockets need, each within its
    descriptor limit, when the user asked for none (``--workers`` unset or 0); said in one
    line.  Asked-for workers are kept (the capacity check warns when they are too few)."""
    if load.workers:
        return load
    need = capacity.locust_processes_for(load.users)
    if need <= 1:
        return load
    log.info(f"{load.users:,} users need more sockets than one Locust process may open "
             f"({capacity.locust_fd_limit():,} descriptors): the run uses {need} Locust "
             f"processes (--workers {need}), about {-(-load.users // need):,} users each")
    return replace(load, workers=min(need, 64))


def with_nginx_workers(spec: StackSpec, load: LoadSpec) -> StackSpec:
    """With the knob ``fit_workers`` (profile ``scale``), as many nginx workers as the held
    polls' connections need, each within its descriptors and worker_connections; said in
    one line."""
    settings = spec.settings()
    if not settings.get("fit_workers"):
        return spec
    polls = capacity.held_polls(load)
    need = capacity.nginx_need(polls, not settings["nchan"])
    workers, _ = capacity.nginx_capacity(settings)
    fit = min(capacity.nginx_workers_for(need, settings), 64)
    if fit <= workers:
        return spec
    per_worker = capacity.nginx_connections_per_worker(settings)
    log.info(f"{polls:,} held polls need about {need:,} nginx connections; a worker holds "
             f"{per_worker:,} (its descriptors and worker_connections): the run uses {fit} "
             f"nginx workers (worker_processes = {fit}; the profile's fit_workers)")
    return replace(spec, nginx_overrides={**spec.nginx_overrides, "worker_processes": fit})


def with_sources(load: LoadSpec, target_url: str, port_range: tuple[int, int]) -> LoadSpec:
    """The load with its source addresses resolved: "auto" on a loopback target becomes as
    many loopback aliases as keep its connections within :data:`capacity.CONNECT_SHARE` of
    each one's ports ("": one, the kernel's choice); anywhere
    else the kernel chooses (the capacity check warns when one address will not do)."""
    if load.source_addresses != "auto":
        return load
    host = urlsplit(target_url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    need = capacity.sources_to_use(capacity.loadgen_connections(load), port_range)
    if not loopback or need <= 1:
        return replace(load, source_addresses="")
    chosen = capacity.loopback_sources(need)
    log.info(f"{load.users:,} users would fill more than {capacity.CONNECT_SHARE:.0%} of one "
             f"address's local ports (ip_local_port_range {port_range[0]}-{port_range[1]}; "
             f"beyond that every connect() searches them): the load generator's connections "
             f"spread over {chosen[0]}-{chosen[-1]} (--source-addresses)")
    return replace(load, source_addresses=",".join(chosen))


def check_sources(addresses: list[str]) -> None:
    """Every source address is one of this host's (a connection can be bound to it): the
    run's (its load generator's) and a load host's (pollbench worker) alike."""
    for address in addresses:
        why = net.can_bind_source(address)
        if why:
            raise UserError(f"--source-addresses: {address} is not an address of this host "
                            f"({why}); give addresses of its interfaces (on a loopback target "
                            "any of 127.0.0.0/8)")


def load_fits(resolved: ResolvedStack, load: LoadSpec,
              port_range: tuple[int, int] | None = None,
              workers_chosen: bool = False) -> list[str]:
    """Refuse a load the target cannot hold as asked (one line); return warnings for what is
    probably a mistake.  ``workers_chosen``: the run chose ``load.workers`` itself (the users'
    sockets need them), so more of them than cores is no mistake of the user's."""
    warnings = []
    app = resolved.app_config
    check_protocol(resolved, load)
    if "ChannelSubscriber" in load.user_classes() and resolved.settings["backends"]:
        # with local state each backend holds its own channels; shared state holds them all once
        holds = app.max_channels * (resolved.settings["backends"]
                                    if resolved.state == "local" else 1)
        if load.channels > holds:
            raise UserError(f"--channels {load.channels} is more than the target holds "
                            f"({holds:,}: {app.max_channels:,} per "
                            f"{'backend' if resolved.state == 'local' else 'shared state'}); "
                            "publishes past it would be refused with 503")
        subscribers = load.users - 1
        if load.channels > subscribers:
            warnings.append(f"--channels {load.channels} with {subscribers} subscribers: "
                            f"{load.channels - subscribers} channels have no subscriber (their "
                            "messages reach nobody)")
    started_redis = resolved.redis_port is not None  # (a server of the user's: its own limit)
    warnings += capacity.warnings_for(resolved.settings, resolved.spec.profile, resolved.state,
                                      load, app.max_waiters, app.max_connections,
                                      resolved.redis_settings.get("maxclients")
                                      if started_redis else None, resolved.spec.backend_port)
    warnings += capacity.port_warnings(resolved.settings, resolved.state, load,
                                       port_range or net.local_port_range(),
                                       target=resolved.url.split("//", 1)[-1],
                                       backend_port=resolved.spec.backend_port)
    cores = os.cpu_count() or 1
    if load.workers > cores and not workers_chosen:
        warnings.append(f"--workers {load.workers} on a machine with {cores} cores: the "
                        "Locust processes queue behind each other (and the stack) for CPU")
    return warnings


def check_protocol(resolved: ResolvedStack, load: LoadSpec) -> None:
    """The load speaks what the stack serves (a built-in protocol against the other's stack
    is refused), and an Nchan stack keeps its messages for the whole run."""
    from loadtests.protocols import BUILT_IN

    served = nginx_config.serves(resolved.settings)
    if resolved.spec.backend_command is not None:
        pass  # the user's service speaks what the user says
    elif load.protocol == "socketio":
        raise UserError("--protocol socketio speaks to a Socket.IO service: start yours as "
                        "the backends with --backend-command (or [backend] in the project "
                        "file; examples/socketio/ has one)")
    elif load.protocol in BUILT_IN and load.protocol != served:
        raise UserError(f"--protocol {load.protocol} does not speak to profile "
                        f"{resolved.spec.profile}, whose stack serves {served}: use "
                        f"--protocol {served}"
                        + (" or --profile nchan" if load.protocol == "nchan" else ""))
    if served == "nchan":
        kept = resolved.settings["nchan_message_timeout"] or \
            nginx_config.NCHAN_DEFAULT_MESSAGE_TIMEOUT
        if load.duration_s + 60 > kept:
            raise UserError(f"nchan_message_timeout {kept} s must outlast the run ("
                            f"{load.duration_s:g} s + 60): messages expiring mid-run trigger "
                            "Nchan 1.3.6's worker crash; raise it in the profile")


def with_access_log(spec: StackSpec, load: LoadSpec) -> StackSpec:
    """The spec with nginx's access-log mode fixed: the user's or the profile's, else the one
    that fits the run (:func:`pollbench.stack.disk.choose_access_log`)."""
    settings = spec.settings()
    if settings.get("access_log") is not None:
        return spec
    chosen = disk.choose_access_log(load, settings["backends"])
    if chosen == "full":  # nginx's own default: the settings (and run.json) stay as they were
        return spec
    return replace(spec, nginx_overrides={**spec.nginx_overrides, "access_log": chosen})


def check_disk(resolved: ResolvedStack, load: LoadSpec, out: Path | None,
               floor: int) -> None:
    """Refuse a run whose estimated bytes would bring its disk under ``floor``."""
    per_hour = disk.estimate(load, resolved.settings["backends"],
                             resolved.settings.get("access_log"))
    total = sum(per_hour.values()) * load.duration_s / 3600
    disk.check_fits(Path(out) if out is not None else results_dir(), total, per_hour, floor)
