"""The stack alone (``pollbench up``): start it, print the URLs, stop everything on Ctrl-C.

With ``--bind ADDR`` (the target on its own host) or ``--agent-port``, ``up`` also samples
the stack (as a run does) and starts the agent (:mod:`pollbench.stack.agent`) that a
controller on another host reads: ``pollbench run --target ... --agent ...``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pollbench import __version__
from pollbench.errors import UserError
from pollbench.records.rundir import new_run_dir
from pollbench.stack.agent import Agent, new_token
from pollbench.stack.preflight import preflight
from pollbench.stack.redis_server import display_url
from pollbench.stack.sampler import Sampler
from pollbench.stack.spec import ResolvedStack, StackSpec
from pollbench.stack.stack import Stack

DEFAULT_AGENT_PORT = 9100
TOKEN_ENV = "POLLBENCH_AGENT_TOKEN"


def check_token(token: str) -> str:
    token = token.strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UserError("--agent-token needs at least 16 characters and no spaces (or leave "
                        "it out: pollbench up makes one and prints it)")
    return token


def up(spec: StackSpec, out: Path | None = None, agent_port: int | None = None,
       agent_token: str | None = None) -> int:
    remote = spec.bind != "127.0.0.1" or agent_port is not None
    token = agent_token or os.environ.get(TOKEN_ENV) or ""
    if token:
        token = check_token(token)
    if agent_port is not None and not 1024 <= agent_port <= 65535:
        raise UserError(f"--agent-port {agent_port} must be from 1024 to 65535")
    # every check before anything is created; ports held
    resolved = preflight(spec, claim=True).resolved
    try:
        agent = None
        if remote:
            port = agent_port or DEFAULT_AGENT_PORT
            if port == spec.port or port in resolved.backend_ports:
                raise UserError(f"--agent-port {port} collides with the stack's ports")
            try:  # bound now: a taken port is refused before anything starts
                agent = Agent(Path("."), token or new_token(), {}, host=spec.bind, port=port)
            except OSError as e:
                raise UserError(f"the agent cannot listen on {spec.bind}:{port} ({e.strerror}): "
                                "choose --agent-port, or a --bind address of this host") from None
        try:
            return _up(resolved, out, agent, generated=not token)
        finally:
            if agent is not None:
                agent.server.server_close()
    finally:
        resolved.release()


def _up(resolved: ResolvedStack, out: Path | None, agent: Agent | None, generated: bool) -> int:
    spec = resolved.spec
    run_dir = new_run_dir(f"up-{spec.profile}", out)
    with Stack(resolved, run_dir) as stack:
        print(f"run folder:   {run_dir}")
        print(f"nginx:        {stack.url}/  (stub_status: {stack.url}/nginx_status)")
        for i, url in enumerate(stack.backend_urls):
            print(f"backend {i}:    {url}/" + ("" if spec.backend_command else
                                               f"  (stats: {url}/stats, Prometheus: {url}/metrics)"))
        if stack.redis_url is not None:
            started = "started here" if resolved.redis_port is not None else "yours"
            print(f"redis:        {display_url(stack.redis_url)}  (shared state, {started}; keys "
                  f"{stack.redis_prefix}*)")
        if stack.prometheus_url:
            print(f"prometheus:   {stack.prometheus_url}/  (scrapes the backends and nginx every "
                  f"second; a load generator on port {stack.loadgen_metrics_port} too)")
        if stack.settings["nchan"]:
            print(f"try:          curl -s {stack.url}/sub/demo   (and in another shell: "
                  f"curl -s -XPOST {stack.url}/pub/demo -d '{{\"hi\": 1}}'; Nchan)")
        else:
            print(f"try:          curl -s '{stack.url}/channels/demo?timeout=10'   (and in "
                  f"another shell: curl -s -XPOST {stack.url}/channels/demo -d '{{\"hi\": 1}}')")
        if agent is None:
            print("Ctrl-C stops everything.", flush=True)
            while True:
                time.sleep(0.5)
                stack.check_alive()
        return _serve(resolved, run_dir, stack, agent, generated)


def _serve(resolved: ResolvedStack, run_dir: Path, stack: Stack, agent: Agent,
           generated: bool) -> int:
    from pollbench.actions.run import target_record

    record = target_record(resolved)
    started = time.time()
    state: dict[str, object] = {"alive": True, "problem": None}

    def info() -> dict:
        return {"pollbench": __version__, "kind": "pollbench-agent", "started_at": started,
                **record, "pids": stack.pids(), **state}

    agent.run_dir = run_dir
    agent.info_source = info
    sampler = Sampler(run_dir / "samples", stack.pids, stack.url, stack.stats_urls,
                      redis_url=stack.redis_url)
    sampler.start()
    agent.start()
    host = resolved.spec.bind if resolved.spec.bind != "0.0.0.0" else "ADDR"
    print(f"agent:        {agent.url.replace('0.0.0.0', host)}  (token required)")
    if generated:
        print(f"agent token:  {agent.token}  (shown once; pass it to "
              "pollbench run --agent-token, or set POLLBENCH_AGENT_TOKEN)")
    print(f"controller:   pollbench run --target http://{host}:{resolved.spec.port} "
          f"--agent http://{host}:{agent.server.server_address[1]} --agent-token TOKEN "
          "--expect-workers N ...")
    print("Ctrl-C stops everything.", flush=True)
    try:
        while True:
            time.sleep(0.5)
            try:
                stack.check_alive()
            except Exception as e:
                state.update(alive=False, problem=str(e).splitlines()[0])
                raise
    finally:
        agent.stop()
        sampler.stop()
