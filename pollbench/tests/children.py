"""Child processes of tests: their output read to its end from the start (a chatty child
never blocks on a full pipe, no pipe is left open), lines waited for as events, and every
child stopped at the end -- killed when it outlives the signal meant to stop it, so that a
child a failed test could not stop never competes with the tests after it.

    with Child([sys.executable, "-m", "target_app", ...]) as child:
        assert child.output.wait_for("ready ", 30), child.output.text()

    output, _ = interrupt(proc)  # a user's Ctrl-C, then what the process wrote
"""

from __future__ import annotations

import signal
import subprocess
import threading


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal ``proc`` (when it still runs) and wait for it, killed after ``timeout``; its
    exit code (-9 when it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60
              ) -> tuple[str, str]:
    """``sig`` to ``proc`` (a user's Ctrl-C by default), then its output (stdout, stderr)
    once it has ended.  A process that outlives ``timeout`` is killed and the test fails
    with its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args!r} was still running {timeout} s after signal "
                             f"{sig} and was killed:\n{(out or '')[-2000:]}{(err or '')[-2000:]}"
                             ) from None


class Output:
    """A child's output, read to its end in a thread from the start: a chatty child never
    blocks on a full pipe, and a test waits for a line (an event) with a timeout, whether or
    not the child says anything."""

    def __init__(self, proc: subprocess.Popen):
        assert proc.stdout is not None
        self.proc, self.closed = proc, False
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        with stream:  # closed at the end of the output: no pipe left open
            for line in stream:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        """True once a line holds ``text``; False when the output ends or time runs out."""
        checked, found = 0, False  # each line is read once, however chatty the child

        def seen() -> bool:
            nonlocal checked, found
            found = found or any(text in ln for ln in self.lines[checked:])
            checked = len(self.lines)
            return found

        with self._cond:
            self._cond.wait_for(lambda: seen() or self.closed, timeout)
            return seen()

    def wait_closed(self, timeout: float) -> str:
        with self._cond:
            self._cond.wait_for(lambda: self.closed, timeout)
        return self.text()


class Child:
    """A child process whose output (stdout and stderr together) an :class:`Output` reads."""

    def __init__(self, argv: list, **kwargs) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, **kwargs)
        self.output = Output(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, text: str, timeout: float) -> None:
        """Fail the test with the child's output when ``text`` does not come in time."""
        if not self.output.wait_for(text, timeout):
            self.stop(signal.SIGKILL)
            raise AssertionError(f"no {text!r} from {self.proc.args!r} within {timeout} s "
                                 f"(exit {self.proc.poll()}):\n{self.output.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the child (when it still runs), wait for it (killed after ``timeout``);
        its exit code."""
        code = stop_process(self.proc, sig, timeout)
        self.output.wait_closed(10)
        return code

    def __getattr__(self, name: str):
        return getattr(self.proc, name)  # poll, wait, send_signal, kill, terminate, returncode

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
