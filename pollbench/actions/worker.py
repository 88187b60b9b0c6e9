"""A load host (``pollbench worker --master HOST[:PORT]``): Locust workers for a controller's
runs, one run after another.

Each round starts Locust as a worker (``--processes N`` of them) that connects to the master,
takes its users and options from it, and exits when the master ends the run; then the next
round waits for the next run (a sweep or a check is many runs).  What happens is printed as
it happens: connected, refused (another pollbench version: the master says which), the run
ended, the master was lost (no heartbeat for 60 s).  Bounded: at most ``max_runs`` rounds,
and a round that reaches no master in Locust's 5 minutes of retries ends the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from analysis.catalog import WORKER_CONNECTED_MARK as CONNECTED_MARK
from analysis.catalog import WORKER_REFUSED_MARK as REFUSED_MARK
from pollbench import __version__
from pollbench.errors import RunFailed, UserError
from pollbench.paths import LOCUSTFILE
from pollbench.stack.loadgen import SOURCE_ENV, parse_sources
from pollbench.stack.nginx_config import check_listen_address
from pollbench.stack.preflight import check_sources
from pollbench.stack.processes import die_with_parent

DEFAULT_MASTER_PORT = 5557
MARKS = {  # Locust's log line -> what pollbench worker says
    "Got quit message from master": "the master ended the run",
    "Didn't get heartbeat from master": "lost the master (no heartbeat for 60 s)",
    "Reset connection to master": "the connection to the master was reset",
}


def parse_master(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    try:
        number = int(port) if port else DEFAULT_MASTER_PORT
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise UserError(f"--master {text!r}: the port must be a number from 1 to 65535")
    try:
        check_listen_address(host)
    except UserError:
        if not host or not all(c.isalnum() or c in "-." for c in host):
            raise UserError(f"--master {text!r} must be HOST[:PORT] (an address or a host "
                            "name, the port default 5557)") from None
        import socket

        try:  # a name that does not resolve would be retried in silence for 5 minutes
            socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise UserError(f"--master {text!r}: the name {host!r} does not resolve "
                            f"({e.strerror}); give the master's address or a name this host "
                            "resolves") from None
    return host, number


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] pollbench worker: {text}", flush=True)


def worker(master: str, processes: int = 1, max_runs: int = 1000, once: bool = False,
           source_addresses: str = "") -> int:
    """``source_addresses``: this host's own (a list or CIDR range), for its Locust processes;
    they win over the run's, which the master sends to every worker alike."""
    host, port = parse_master(master)
    sources = parse_sources(source_addresses)
    check_sources(sources)
    if not 1 <= processes <= 64:
        raise UserError(f"--processes must be from 1 to 64 (it is {processes})")
    if not 1 <= max_runs <= 100_000:
        raise UserError(f"--max-runs must be from 1 to 100000 (it is {max_runs})")
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
           "--master-host", host, "--master-port", str(port)]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    env = dict(os.environ)
    if sources:
        env[SOURCE_ENV] = ",".join(sources)
    say(f"pollbench {__version__}, {processes} Locust worker process(es) for the master at "
        f"{host}:{port}" + (f", connecting from {len(sources)} source address(es) "
                            f"({sources[0]}{'...' if len(sources) > 1 else ''})"
                            if sources else ""))
    for round_ in range(1, max_runs + 1):
        say(f"waiting for a run (round {round_})")
        outcome = _round(cmd, env)
        if outcome == "refused":
            return 2
        if outcome == "no master":
            raise RunFailed(f"no master answered at {host}:{port} within Locust's 5 minutes "
                            "of retries: start pollbench run --expect-workers there first, with "
                            f"--master-bind an address this host reaches and port {port} open")
        if once:
            break
    say("done")
    return 0


def _round(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """One Locust worker session; returns "ran", "refused" or "no master"."""
    # its own group (Ctrl-C here stops it in order), and it ends if this process is killed
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent)
    connected, refused = 0, False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            print(f"    {line}", flush=True)
            if CONNECTED_MARK in line:
                connected += 1
                say(f"connected to the master ({connected})")
            elif REFUSED_MARK in line:
                refused = True
                say(line[line.index(REFUSED_MARK):])
            else:
                for mark, text in MARKS.items():
                    if mark in line:
                        say(text)
        proc.wait()
    finally:
        if proc.poll() is None:  # Ctrl-C: the whole group, politely then not
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proc.stdout is not None:
            proc.stdout.close()
    if refused:
        return "refused"
    if not connected:
        return "no master"
    say(f"the Locust worker(s) exited with code {proc.returncode}")
    return "ran"
