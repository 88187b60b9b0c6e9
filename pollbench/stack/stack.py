"""The stack under test: N target_app backends behind a real nginx, from one run folder.

    resolved = StackSpec(profile="seed", backends=4).resolve()   # every check, no process
    with Stack(resolved, run_dir) as stack:   # renders, nginx -t, starts, waits for health
        print(stack.url)
    # leaving the block stops nginx and the backends, whatever happened inside

Layout of the run folder: ``nginx/nginx.conf`` (rendered), ``nginx/logs/``
(error log and the JSON access log), ``logs/backend-<i>.log``, ``logs/nginx.log``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from pollbench.errors import RunFailed, UserError
from pollbench.records.rundir import write_atomic
from pollbench.stack import nginx_config, redis_server
from pollbench.stack.faults import BACKEND_ACTIONS, Fault
from pollbench.stack.net import answers
from pollbench.stack.processes import Child, ChildGroup, signal_group, spawn, wait_until
from pollbench.stack.spec import ResolvedStack


class ConfigRefused(UserError):
    """``nginx -t`` said no: the message has all of nginx's output, ``summary`` its first error."""

    def __init__(self, conf: Path, stderr: str):
        lines = stderr.strip().splitlines() or ["(no output)"]
        self.summary = next((ln.strip() for ln in lines if "[emerg]" in ln), lines[0].strip())
        super().__init__(f"nginx -t refused the rendered config {conf}:\n{stderr.strip()}")


class Stack:
    """Starts backends then nginx from ``run_dir``; stops them on exit, Ctrl-C included."""

    def __init__(self, resolved: ResolvedStack, run_dir: Path, detach_nginx: bool = False):
        self.resolved = resolved
        # nginx refuses a binary upgrade (USR2) while its parent is the process that started
        # it: for an upgrade, nginx is started through a shell that exits at once
        self.detach_nginx = detach_nginx
        self.run_dir = Path(run_dir)
        self.group = ChildGroup()
        self.backends: list[Child] = []
        self.nginx: Child | None = None
        self.redis: Child | None = None
        self.exit_codes: dict[str, int | None] = {}
        self.backend_cmds: list[list[str]] = []
        # stopped on purpose (a fault): not an unexpected death while it is down
        self.expected_down: set[str] = set()
        # the fault injector replaces children while the run loop checks them: one at a time
        self._children_lock = threading.Lock()
        self.nginx_master: int | None = None  # after a binary upgrade: the new master's pid
        self.prometheus_url: str | None = None  # --prometheus: the server, once it answers

    @property
    def settings(self) -> dict[str, Any]:
        return self.resolved.settings

    @property
    def url(self) -> str:
        return self.resolved.url

    @property
    def backend_urls(self) -> list[str]:
        return self.resolved.backend_urls

    @property
    def stats_urls(self) -> list[str]:
        return self.resolved.stats_urls

    @property
    def prefix(self) -> Path:
        return self.run_dir / "nginx"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "access.jsonl"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def render(self) -> Path:
        for sub in ("logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        text = nginx_config.render(self.settings, nginx_config.RenderPaths.for_prefix(self.prefix),
                                   self.resolved.port, list(self.resolved.backend_ports),
                                   listen_address=self.resolved.spec.bind)
        conf = self.prefix / "nginx.conf"
        conf.write_text(text)
        if self.resolved.redis_port is not None:
            (self.run_dir / "redis").mkdir(exist_ok=True)
            self.redis_conf.write_text(redis_server.render_redis(
                self.resolved.redis_settings, self.resolved.redis_port, self.run_dir))
        return conf

    @property
    def redis_conf(self) -> Path:
        return self.run_dir / "redis" / "redis.conf"

    @property
    def redis_url(self) -> str | None:
        """The Redis the backends share (None: local state)."""
        return self.resolved.redis_url

    @property
    def redis_prefix(self) -> str:
        """Every key of this run starts with it: two runs on one Redis never meet."""
        return f"pb:{self.run_dir.name}:"

    def _spawn_redis(self) -> Child:
        assert self.resolved.redis_binary is not None
        return spawn("redis", [self.resolved.redis_binary, str(self.redis_conf)],
                     self.run_dir / "logs" / "redis.log", cpus=self.resolved.spec.cpus)

    def _wait_redis(self, child: Child, timeout: float = 10) -> None:
        url = self.redis_url
        assert url is not None
        ok = wait_until(lambda: not child.alive() or redis_server.ping(url, 0.5) is None,
                        timeout)
        if not child.alive():
            raise RunFailed(f"redis exited at start with code {child.popen.returncode}; "
                            f"last lines of {child.log_path}:\n{child.log_tail()}")
        if not ok:
            raise RunFailed(f"redis did not answer PING at {url} within {timeout:g} s; last "
                            f"lines of {child.log_path}:\n{child.log_tail()}")

    def nginx_cmd(self, conf: Path) -> list[str]:
        return [self.resolved.nginx_path, "-p", str(self.prefix), "-c", str(conf)]

    def test_config(self, conf: Path) -> None:
        proc = subprocess.run([*self.nginx_cmd(conf), "-t"], capture_output=True, text=True)
        (self.run_dir / "logs" / "nginx-t.log").write_text(proc.stderr)
        if proc.returncode != 0:
            raise ConfigRefused(conf, proc.stderr)

    def start(self) -> None:
        conf = self.render()
        self.test_config(conf)
        cfg = self.resolved.app_config
        spec = self.resolved.spec
        if self.resolved.redis_port is not None:
            self.redis = self.group.add(self._spawn_redis())
            self._wait_redis(self.redis)
        state_args = ["--state", cfg.state]
        if self.redis_url is not None:  # the URL (maybe with a password) in the environment
            state_args += ["--redis-prefix", self.redis_prefix]
        user = spec.backend_command
        for i, port in enumerate(self.resolved.backend_ports):
            if user is not None:  # the user's service: their command, their readiness
                self.backend_cmds.append(user.argv(port, i, self.redis_url))
                self.backends.append(self.group.add(self._spawn_backend(i)))
                continue
            cmd = [sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
                   "--index", str(i),
                   "--loop", spec.loop, "--max-hold", str(cfg.max_hold_s),
                   "--default-hold", str(cfg.default_hold_s),
                   "--max-connections", str(cfg.max_connections),
                   "--max-waiters", str(cfg.max_waiters),
                   "--delivery-delay-ms", str(cfg.delivery_delay_ms),
                   "--burn-us", str(cfg.burn_us), *state_args]
            self.backend_cmds.append(cmd)
            self.backends.append(self.group.add(self._spawn_backend(i)))
        ready = self.resolved.ready_path
        for child, url in zip(self.backends, self.backend_urls, strict=True):
            self._wait_healthy(child, f"{url}{ready}", self.resolved.ready_timeout_s)
        cmd = [*self.nginx_cmd(conf), "-g", "daemon off;"]
        log = self.run_dir / "logs" / "nginx.log"
        if not self.detach_nginx:
            self.nginx = self.group.add(spawn("nginx", cmd, log, cpus=spec.cpus))
            self._wait_healthy(self.nginx, f"{self.url}{ready}", 10)
            self._start_prometheus()
            return
        # The shell's process group holds nginx (killed with it at stop).  The shell exits
        # once nginx has written its pid file: nginx notes its parent at start, and allows an
        # upgrade only after that parent is gone (bounded: 10 s).
        pid_file = self.run_dir / "logs" / "nginx-master.pid"
        nginx_pid = self.prefix / "nginx.pid"
        nginx_pid.unlink(missing_ok=True)
        script = (f"{shlex.join(cmd)} & echo $! > {shlex.quote(str(pid_file))}; "
                  f"for i in $(seq 200); do [ -s {shlex.quote(str(nginx_pid))} ] && break; "
                  "sleep 0.05; done")
        self.nginx = self.group.add(spawn("nginx-launcher", ["/bin/sh", "-c", script], log,
                                          cpus=spec.cpus))
        self.expected_down.add("nginx-launcher")
        self.nginx.popen.wait(15)
        try:
            self.nginx_master = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise RunFailed(f"nginx did not start; last lines of {log}:\n"
                            f"{self.nginx.log_tail()}") from None
        ready = self.resolved.ready_path
        if not wait_until(lambda: not self._master_alive() or answers(f"{self.url}{ready}"),
                          10) or not self._master_alive():
            raise RunFailed(f"nginx did not answer {self.url}{ready} within 10 s; last lines "
                            f"of {log}:\n{self.nginx.log_tail()}")
        self._start_prometheus()

    @property
    def loadgen_metrics_port(self) -> int | None:
        """The port the load generator's endpoint must use (the one Prometheus scrapes)."""
        ports = self.resolved.prometheus_ports
        return ports[2] if ports is not None else None

    def _start_prometheus(self) -> None:
        """--prometheus: nginx's exporter, then the server; waits until each answers."""
        ports = self.resolved.prometheus_ports
        if ports is None:
            return
        from pollbench.stack import prometheus

        server_bin, exporter_bin = prometheus.find_binaries()
        server_port, exporter_port, loadgen_port = ports
        folder = self.run_dir / "prometheus"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        user = self.resolved.spec.backend_command
        scraped = user is None or user.metrics is not None  # the user's: only when they serve
        jobs = prometheus.scrape_jobs(list(self.resolved.backend_ports) if scraped else [],
                                      exporter_port, loadgen_port)
        paths = {"backend": user.metrics} if user is not None and user.metrics else None
        write_atomic(config, prometheus.render_config(jobs, paths=paths).encode())
        exporter = self.group.add(spawn(
            "nginx-exporter", prometheus.exporter_cmd(exporter_bin, f"{self.url}/nginx_status",
                                                      exporter_port),
            self.run_dir / "logs" / "nginx-exporter.log"))
        self._wait_healthy(exporter, f"http://127.0.0.1:{exporter_port}/metrics", 15)
        server = self.group.add(spawn(
            "prometheus", prometheus.prometheus_cmd(server_bin, config, folder / "data",
                                                    server_port),
            self.run_dir / "logs" / "prometheus.log"))
        url = f"http://127.0.0.1:{server_port}"
        self._wait_healthy(server, f"{url}/-/ready", 30)
        self.prometheus_url = url

    def _master_alive(self) -> bool:
        try:
            return psutil.Process(self._master()).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _spawn_backend(self, i: int) -> Child:
        env = None
        user = self.resolved.spec.backend_command
        if user is not None:
            return spawn(f"backend-{i}", self.backend_cmds[i],
                         self.run_dir / "logs" / f"backend-{i}.log",
                         env=user.environment(self.redis_url), cwd=user.workdir(),
                         cpus=self.resolved.spec.cpus)
        if self.redis_url is not None:
            env = {**os.environ, "TARGET_APP_REDIS_URL": self.redis_url}
        return spawn(f"backend-{i}", self.backend_cmds[i],
                     self.run_dir / "logs" / f"backend-{i}.log", env=env,
                     cpus=self.resolved.spec.cpus)

    def _wait_healthy(self, child: Child, url: str, timeout: float) -> None:
        def healthy() -> bool:
            return not child.alive() or answers(url)

        ok = wait_until(healthy, timeout)
        if not child.alive():
            error_log = self.prefix / "logs" / "error.log"
            tail = child.log_tail()
            if child.name == "nginx" and error_log.exists():
                tail += "\n" + "\n".join(error_log.read_text().splitlines()[-5:])
            raise RunFailed(f"{child.name} exited at start with code {child.popen.returncode}; "
                            f"last lines of {child.log_path}:\n{tail}")
        if not ok:
            raise RunFailed(f"{child.name} did not answer {url} within {timeout:g} s; "
                            f"last lines of {child.log_path}:\n{child.log_tail()}")

    def check_alive(self, watched_elsewhere: Collection[str] = ()) -> None:
        """Raise RunFailed when a child has died that nothing took down on purpose.
        ``watched_elsewhere``: children whose ending the caller handles itself (the run loop's
        Locust, whose exit at its time limit is how a run ends)."""
        with self._children_lock:
            dead = [c for c in self.group.dead()
                    if c.name not in self.expected_down and c.name not in watched_elsewhere]
            master_gone = self.nginx_master is not None and not self._master_alive()
        if dead:
            c = dead[0]
            raise RunFailed(f"{c.name} exited unexpectedly with code {c.popen.returncode}; "
                            f"last lines of {c.log_path}:\n{c.log_tail()}")
        if master_gone:
            raise RunFailed(f"nginx (master {self.nginx_master}, after the binary upgrade) "
                            "exited unexpectedly; see nginx/logs/error.log")

    def pids(self) -> dict[str, int]:
        pids = {c.name: c.pid for c in self.group.children if c.alive()}
        if self.nginx_master is not None:
            pids["nginx"] = self.nginx_master
        return pids

    # -- faults (pollbench.stack.faults) ------------------------------------------------------

    def inject(self, fault: Fault, halt: threading.Event) -> str:
        """Do one fault; return what happened (for run.json).  ``halt``: the run is ending."""
        if fault.target == "redis":
            return self._redis_fault(fault, halt)
        if fault.action in BACKEND_ACTIONS:
            i = fault.backend
            if i >= len(self.backends):
                raise ValueError(f"there is no {fault.target} (this stack has "
                                 f"{len(self.backends)} backends)")

            def install_backend(new: Child) -> None:
                self.backends[i] = new

            def backend_health(new: Child) -> str:
                ok = wait_until(lambda: not new.alive() or answers(
                    f"{self.backend_urls[i]}{self.resolved.ready_path}"),
                    self.resolved.ready_timeout_s) and new.alive()
                return "" if ok else f" (not ready within {self.resolved.ready_timeout_s:g} s)"

            # (a backend is started from this thread, which lives until the run ends)
            return self._process_fault(self.backends[i], fault, halt,
                                       lambda: self._spawn_backend(i), install_backend,
                                       backend_health)
        if fault.action == "reload":
            return self._reload_nginx(fault.target)
        return self._upgrade_nginx()

    def _take_down(self, child: Child, fault: Fault, halt: threading.Event) -> int | None:
        """Kill (then wait the fault's duration) or gracefully stop (SIGTERM, SIGKILL after
        15 s) ``child``; it is expected down until its replacement is in.  If it cannot be
        reaped it is no longer expected down (a real death then still shows) and this raises."""
        with self._children_lock:
            self.expected_down.add(child.name)
        if fault.action == "kill":
            signal_group(child.pid, signal.SIGKILL)
            gone = _reap(child, 10)
        else:  # restart: SIGTERM (a backend answers its held polls first), then it exits
            signal_group(child.pid, signal.SIGTERM)
            gone = _reap(child, 15)
            if not gone:
                signal_group(child.pid, signal.SIGKILL)
                gone = _reap(child, 5)
        if not gone:
            with self._children_lock:
                self.expected_down.discard(child.name)
            raise RuntimeError(f"{child.name} (pid {child.pid}) did not exit after "
                               f"{'SIGKILL' if fault.action == 'kill' else 'SIGTERM and SIGKILL'}")
        if fault.action == "kill":
            halt.wait(fault.duration_s or 0)
        return child.popen.returncode

    def _redis_fault(self, fault: Fault, halt: threading.Event) -> str:
        """kill / stop / restart of the stack's own Redis (same port and config; with
        persistence off its data, and so every channel's epoch, is gone after a kill)."""
        if self.redis is None:
            raise ValueError("this stack started no Redis (--state local, or --redis URL)")

        def install_redis(new: Child) -> None:
            self.redis = new

        def redis_health(new: Child) -> str:
            try:
                self._wait_redis(new)
                return ""
            except RunFailed as e:
                return f" (not answering: {str(e).splitlines()[0]})"

        return self._process_fault(self.redis, fault, halt, self._spawn_redis, install_redis,
                                   redis_health)

    def _process_fault(self, child: Child, fault: Fault, halt: threading.Event,
                       respawn: Callable[[], Child], install: Callable[[Child], None],
                       health: Callable[[Child], str]) -> str:
        """stop (SIGSTOP for the fault's duration, then SIGCONT), or kill / restart and start
        it again: ``respawn`` makes the new process, ``install`` puts it where the old one
        was, ``health`` says "" once it answers (else why not)."""
        if fault.action == "stop":
            signal_group(child.pid, signal.SIGSTOP)
            halt.wait(fault.duration_s or 0)
            signal_group(child.pid, signal.SIGCONT)
            return f"{child.name} (pid {child.pid}) stopped for {fault.duration_s:g} s"
        code = self._take_down(child, fault, halt)
        if halt.is_set():
            return f"{child.name} pid {child.pid} exited with {code}; the run ended first"
        new = respawn()
        with self._children_lock:
            self.group.children[self.group.children.index(child)] = new
            install(new)
            self.expected_down.discard(child.name)
        return (f"{child.name} pid {child.pid} exited with {code}; restarted as pid "
                f"{new.pid}{health(new)}")

    def _master(self) -> int:
        if self.nginx_master is not None:
            return self.nginx_master
        assert self.nginx is not None
        return self.nginx.pid

    def _reload_nginx(self, profile: str | None) -> str:
        conf = self.prefix / "nginx.conf"
        what = "same config"
        if profile:
            spec = replace(self.resolved.spec, profile=profile)
            settings = spec.settings()
            if settings["backends"] != self.settings["backends"]:
                raise ValueError(f"profile {profile} has {settings['backends']} backends; this "
                                 f"stack has {self.settings['backends']}")
            conf.write_text(nginx_config.render(
                settings, nginx_config.RenderPaths.for_prefix(self.prefix), self.resolved.port,
                list(self.resolved.backend_ports), listen_address=self.resolved.spec.bind))
            self.test_config(conf)
            what = f"config of profile {profile}"
        before = self.workers()
        os.kill(self._master(), signal.SIGHUP)
        return f"SIGHUP to master {self._master()} ({what}); workers before: {before}"

    def _upgrade_nginx(self) -> str:
        old = self._master()
        pid_file, old_file = self.prefix / "nginx.pid", self.prefix / "nginx.pid.oldbin"
        os.kill(old, signal.SIGUSR2)

        def new_master() -> int | None:
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            return pid if pid != old and old_file.exists() else None

        if not wait_until(lambda: new_master() is not None, 10):
            raise RuntimeError("no new master after SIGUSR2 (see nginx/logs/error.log)")
        new = new_master()
        assert new is not None
        with self._children_lock:  # the new master is the one watched before the old goes
            if self.nginx is not None and old == self.nginx.pid:
                self.expected_down.add(self.nginx.name)
            self.nginx_master = new
        os.kill(old, signal.SIGWINCH)  # the old workers finish what they hold, then exit
        os.kill(old, signal.SIGQUIT)   # the old master leaves once its workers have
        return f"master {old} -> {new} (USR2, WINCH, QUIT)"

    def workers(self) -> list[int]:
        """The nginx worker pids now (old workers of a reload included)."""
        try:
            master = psutil.Process(self._master())
            return [c.pid for c in master.children() if c.pid != self.nginx_master]
        except psutil.Error:
            return []

    def stop(self) -> dict[str, int | None]:
        if self.nginx_master is not None:  # after an upgrade: the new master, politely first
            try:
                master = psutil.Process(self.nginx_master)
                master.terminate()
                master.wait(6)
            except psutil.TimeoutExpired:
                pass  # the group's SIGKILL below ends it
            except psutil.Error:
                pass
        if self.group.children:
            self.exit_codes.update(self.group.stop_all())
            self.group.children.clear()
        return self.exit_codes


def _reap(child: Child, timeout: float) -> bool:
    """Wait for a signalled child to exit; False if it is still there after ``timeout``."""
    try:
        child.popen.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
