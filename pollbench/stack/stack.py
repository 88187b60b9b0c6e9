"""The stack under test: N target_app backends behind a real nginx, from one run folder.

    resolved = StackSpec(profile="seed", backends=4).resolve()   # every check, no process
    with Stack(resolved, run_dir) as stack:   # renders, nginx -t, starts, waits for health
        print(stack.url)
    # leaving the block stops nginx and the backends, whatever happened inside

Layout of the run folder: ``nginx/nginx.conf`` (rendered), ``nginx/logs/``
(error log and the JSON access log), ``logs/backend-<i>.log``, ``logs/nginx.log``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from pollbench.errors import RunFailed, UserError
from pollbench.stack import nginx_config
from pollbench.stack.net import answers
from pollbench.stack.processes import Child, ChildGroup, spawn, wait_until
from pollbench.stack.spec import ResolvedStack


class ConfigRefused(UserError):
    """``nginx -t`` said no: the message has all of nginx's output, ``summary`` its first error."""

    def __init__(self, conf: Path, stderr: str):
        lines = stderr.strip().splitlines() or ["(no output)"]
        self.summary = next((ln.strip() for ln in lines if "[emerg]" in ln), lines[0].strip())
        super().__init__(f"nginx -t refused the rendered config {conf}:\n{stderr.strip()}")


class Stack:
    """Starts backends then nginx from ``run_dir``; stops them on exit, Ctrl-C included."""

    def __init__(self, resolved: ResolvedStack, run_dir: Path):
        self.resolved = resolved
        self.run_dir = Path(run_dir)
        self.group = ChildGroup()
        self.backends: list[Child] = []
        self.nginx: Child | None = None
        self.exit_codes: dict[str, int | None] = {}

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
                                   self.resolved.port, list(self.resolved.backend_ports))
        conf = self.prefix / "nginx.conf"
        conf.write_text(text)
        return conf

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
        for i, port in enumerate(self.resolved.backend_ports):
            cmd = [sys.executable, "-m", "target_app", "--processes", "1", "--port", str(port),
                   "--index", str(i),
                   "--loop", spec.loop, "--max-hold", str(cfg.max_hold_s),
                   "--default-hold", str(cfg.default_hold_s),
                   "--max-connections", str(cfg.max_connections),
                   "--max-waiters", str(cfg.max_waiters),
                   "--delivery-delay-ms", str(cfg.delivery_delay_ms)]
            self.backends.append(self.group.add(
                spawn(f"backend-{i}", cmd, self.run_dir / "logs" / f"backend-{i}.log",
                      cpus=spec.cpus)))
        for child, url in zip(self.backends, self.backend_urls, strict=True):
            self._wait_healthy(child, f"{url}/healthz", 15)
        self.nginx = self.group.add(spawn("nginx", [*self.nginx_cmd(conf), "-g", "daemon off;"],
                                          self.run_dir / "logs" / "nginx.log",
                                          cpus=spec.cpus))
        self._wait_healthy(self.nginx, f"{self.url}/healthz", 10)

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

    def check_alive(self) -> None:
        dead = self.group.dead()
        if dead:
            c = dead[0]
            raise RunFailed(f"{c.name} exited unexpectedly with code {c.popen.returncode}; "
                            f"last lines of {c.log_path}:\n{c.log_tail()}")

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.group.children if c.alive()}

    def stop(self) -> dict[str, int | None]:
        if self.group.children:
            self.exit_codes.update(self.group.stop_all())
            self.group.children.clear()
        return self.exit_codes
