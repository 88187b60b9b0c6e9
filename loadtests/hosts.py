"""Several hosts (``pollbench worker`` / ``pollbench run --expect-workers``): what a Locust
master and its workers say to each other beyond Locust's own protocol.

* Each worker says which pollbench it runs (:data:`HELLO_TYPE`); the master refuses one
  that differs (:data:`REFUSE_TYPE`), and ``pollbench worker`` finds the lines
  :data:`CONNECTED_MARK` / :data:`REFUSED_MARK` in Locust's log.
* The master follows which workers joined, were refused or were lost mid-run
  (:class:`MasterWorkers`), as events in events.jsonl.
* Each worker measures its clock's offset to the target's agent before and after the test
  (:func:`measure_clock`), and corrects its receipt times by it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import gevent

from analysis.catalog import WORKER_CONNECTED_MARK, WORKER_REFUSED_MARK
from loadtests.options import SOURCE_ENV, parse_source_addresses
from loadtests.recorder import Recorder, Sink

HELLO_TYPE = "pollbench_hello"
REFUSE_TYPE = "pollbench_refuse"
REFUSED_MARK = WORKER_REFUSED_MARK  # pollbench worker looks for these in Locust's log
CONNECTED_MARK = WORKER_CONNECTED_MARK
CLOCK_EXCHANGES = 32
log = logging.getLogger("pollbench")


def pollbench_version() -> str:
    """The installed pollbench's version (read from its metadata: nothing of it is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pollbench")
    except PackageNotFoundError:
        return "unknown"


def node_name(node_id: str) -> str:
    return f"worker-{node_id[-8:]}"


class MasterWorkers:
    """The master's view of its workers: joined, refused (another pollbench), lost."""

    def __init__(self, runner, sink: Sink | None) -> None:
        self.runner, self.sink = runner, sink
        self.workers: dict[str, dict] = {}  # node id -> what it said, its state
        self.lost: list[str] = []
        self.stopped = False  # no test runs (the last one stopped, or the session ended):
        # leaving is no loss -- at a run's end Locust stops the test, then tells every
        # worker to quit, then ends the session, and a watch can fall in between

    def on_hello(self, environment, msg, **_kw) -> None:
        data = msg.data if isinstance(msg.data, dict) else {}
        theirs, mine = data.get("pollbench"), pollbench_version()
        node = node_name(msg.node_id)
        refused = theirs != mine
        # a refused worker quits at once: its leaving is no loss (watch skips it)
        self.workers[msg.node_id] = {"host": data.get("host"), "pollbench": theirs,
                                     "lost": False, "refused": refused}
        if refused:
            reason = (f"pollbench {theirs} on {data.get('host')} but {mine} on the master: "
                      "install the same pollbench on every host")
            log.error("worker %s %s %s", node, REFUSED_MARK, reason)
            self.runner.send_message(REFUSE_TYPE, {"reason": reason}, client_id=msg.node_id)
            event: dict[str, Any] = {"kind": "worker_refused", "node": node, "reason": reason}
        else:
            event = {"kind": "worker_joined", "node": node, "host": data.get("host"),
                     "source_addresses": data.get("source_addresses") or []}
        if self.sink is not None:
            self.sink.event("master", event)

    def test_started(self) -> None:
        self.stopped = False

    def test_stopped(self) -> None:
        self.stopped = True

    def watch(self) -> None:
        """A worker that went missing or quit during a test is lost (once each); one that
        leaves while no test runs has left."""
        from locust.runners import STATE_MISSING

        present = {c.id: c.state for c in self.runner.clients.values()}
        for node, info in self.workers.items():
            gone = node not in present or present[node] == STATE_MISSING
            if not gone or info["lost"] or info.get("refused") or info.get("left"):
                continue
            if self.stopped:  # it left between tests, or as told at the end: no loss
                info["left"] = True
                continue
            info["lost"] = True
            name = node_name(node)
            self.lost.append(name)
            log.error("worker %s (%s) was lost mid-run", name, info.get("host"))
            if self.sink is not None:
                self.sink.event("master", {"kind": "worker_lost", "node": name,
                                           "host": info.get("host")})


def say_hello(runner) -> None:
    """A worker: tell the master which pollbench this is; quit if it refuses."""

    def on_refused(environment, msg, **_kw) -> None:
        log.error("%s %s", REFUSED_MARK, (msg.data or {}).get("reason"))
        gevent.spawn(runner.quit)

    runner.register_message(REFUSE_TYPE, on_refused)
    runner.send_message(HELLO_TYPE, {"pollbench": pollbench_version(),
                                     "host": socket.gethostname(), "pid": os.getpid(),
                                     # this load host's own (pollbench worker --source-addresses)
                                     "source_addresses": parse_source_addresses(
                                         os.environ.get(SOURCE_ENV, ""))})
    log.info("%s %s:%s (pollbench %s)", CONNECTED_MARK, runner.master_host,
             runner.master_port, pollbench_version())


def measure_clock(environment, recorder: Recorder, phase: str) -> bool:
    """This process's clock offset to the target (the agent's /v1/time), before the
    test (then applied to receipt times) and after it (drift), as "clock" events."""
    opts = environment.parsed_options
    url = getattr(opts, "pb_agent", "") if opts is not None else ""
    if not url:
        return False
    import http.client
    from urllib.parse import urlsplit

    from analysis.clock import measure
    from analysis.signing import sign_headers

    parts = urlsplit(url)
    token = getattr(opts, "pb_agent_token", "")
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=2)

    def remote() -> float:  # one keep-alive connection: no handshake in the round trips
        conn.request("GET", "/v1/time", headers=sign_headers(token, "GET", "/v1/time"))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"the agent answered {resp.status}")
        return float(json.loads(body)["time"])

    try:  # before: spread over ~0.3 s of a busy start; after: at once (the master waits
        # for nobody once it quits)
        offset = measure(remote, CLOCK_EXCHANGES if phase == "before" else 12,
                         pause=(lambda: gevent.sleep(0.01)) if phase == "before" else None)
    except Exception as e:  # no offset: latency stays uncorrected, and it is said
        recorder.event("clock", phase=phase, error=f"{type(e).__name__}: {e}",
                            host=socket.gethostname())
        return True
    finally:
        conn.close()
    if phase == "before":
        # corrected only when the offset is known to be non-zero
        recorder.clock_offset_s = (offset.offset_s if abs(offset.offset_s)
                                        > offset.uncertainty_s else 0.0)
    recorder.event("clock", phase=phase, host=socket.gethostname(),
                        applied_s=recorder.clock_offset_s, **offset.as_dict())
    return True
