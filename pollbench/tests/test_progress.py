"""What ``pollbench run`` says as it goes and at its end: progress lines whose rates see a
broadcast, and a run that measured nothing called void."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pollbench.actions.runloop import Progress


def snapshots(seconds: int) -> list[dict]:
    """progress.json as Locust rewrites it each second: one message to 1,000 subscribers
    every 5 s (a broadcast) and their 1,000 re-polls, nothing in between."""
    out, delivered, requests = [], 0, 0
    for t in range(1, seconds + 1):
        if t % 5 == 3:  # the broadcast lands between two lines
            delivered += 1000
            requests += 1001
        out.append({"elapsed_s": float(t), "users": 1001, "requests": requests,
                    "delivered": delivered, "failures": 0, "lost": 0, "duplicates": 0,
                    # what progress.json says of its own last second
                    "requests_per_s": 1001.0 if t % 5 == 3 else 0.0,
                    "deliveries_per_s": 1000.0 if t % 5 == 3 else 0.0})
    return out


def test_a_broadcast_every_5_s_shows_in_every_line_and_adds_up_to_the_counts():
    progress = Progress(Path("unread"), total_s=30)  # its file is not read: line() is given it
    snaps = snapshots(30)
    lines, before = [], {}
    for snap in snaps[4::5]:  # the lines, every 5 s
        lines.append(progress.line(snap, before))
        before = snap
    rates = [float(line.split("deliveries/s")[1].split()[0]) for line in lines]
    # each line's own 5 s held one broadcast: 1,000 deliveries in 5 s, never 0.0
    assert rates == pytest.approx([200.0] * 6)
    assert sum(r * 5 for r in rates) == snaps[-1]["delivered"]
    requests = [float(line.split("HTTP req/s")[1].split()[0]) for line in lines]
    assert requests == pytest.approx([200.2] * 6)


def test_more_users_than_asked_for_is_said_once(tmp_path):
    # Locust's master, missing a busy worker's heartbeats, hands its users to the others;
    # when the worker answers again they run twice (125,914 ran of 100,001 asked, here)
    path = tmp_path / "progress.json"
    progress = Progress(path, total_s=30, every_s=0.0, asked_users=1001)
    said = []
    for t, users in enumerate([500, 1001, 1001, 1250, 1300]):
        path.write_text(json.dumps({**snapshots(5)[t], "users": users, "time": t}))
        progress.poll()
        said.append(progress.over)
    assert said[:3] == [None, None, None]
    assert said[3] == said[4] and said[3] is not None
    assert said[3].startswith("1,250 users ran at 4 s, more than the 1,001 asked for")


def test_a_run_that_measured_nothing_is_void_and_says_why():
    from pollbench.records.runrecord import void_reason

    channels = {"scenario": "channels", "publish_rate": 20.0}
    # 64 workers still starting when 4 s ran out: not one request
    why = void_reason({"parameters": channels, "loadgen": {"requests": 0, "delivered": 0}})
    assert why is not None and "no HTTP request was made" in why and "--duration" in why
    # every request failed
    why = void_reason({"parameters": channels,
                       "loadgen": {"requests": 500, "http_failures": 500, "delivered": 0}})
    assert why == "none of its 500 HTTP requests succeeded"
    # polls answered, but no message delivered in a channels run that publishes
    why = void_reason({"parameters": channels,
                       "loadgen": {"requests": 40, "http_failures": 0, "delivered": 0}})
    assert why is not None and "no message was delivered" in why
    # measured: deliveries; or a tasks run, which delivers none by design
    assert void_reason({"parameters": channels,
                        "loadgen": {"requests": 40, "http_failures": 39, "delivered": 3}}) is None
    assert void_reason({"parameters": {"scenario": "tasks"},
                        "loadgen": {"requests": 40, "http_failures": 0, "delivered": 0}}) is None


def test_messages_lost_to_a_restart_are_named_never_a_bare_zero():
    """38 subscribers saw their channel's state lost (nginx re-routed their polls): the
    summary names the epoch changes, and says "unknown" with the subscribers affected when
    no publish told where the old state ended, instead of "lost 0"."""
    from pollbench.records.runrecord import summary_lines

    base = {"requests": 1000, "http_failures": 0, "elapsed_s": 10.0, "delivered": 900,
            "duplicates": 0, "lost_epoch": 0}
    clean = summary_lines({"loadgen": {**base, "lost": 0}})[0]
    assert clean.endswith("lost 0  duplicates 0")
    unknown = summary_lines({"loadgen": {**base, "lost": 0, "epoch_changes": 38,
                                         "lost_epoch_unknown": 38}})[0]
    assert "lost 0 (0 to 38 epoch change(s): a channel's state lost; unknown for 38 " \
           "subscriber(s)" in unknown
    counted = summary_lines({"loadgen": {**base, "lost": 12, "lost_epoch": 12,
                                         "epoch_changes": 3}})[0]
    assert "lost 12 (12 to 3 epoch change(s)" in counted and "unknown" not in counted


def test_a_load_generator_that_exits_early_or_with_an_error_leaves_an_incomplete_run(tmp_path):
    """A load generator that ran out (descriptors, say) and exited 1 after a part of its
    duration made a run "complete", exit 0: it is incomplete, and says why, from its log."""
    import sys
    from dataclasses import dataclass

    from analysis.catalog import EXIT_RUN_FAILED
    from pollbench.actions.external_run import ExternalSide
    from pollbench.actions.runloop import drive
    from pollbench.records.runrecord import record_start
    from pollbench.stack.loadgen import LoadSpec

    @dataclass(frozen=True)
    class DyingLoad(LoadSpec):
        code: int = 1

        def headless_cmd(self, *args, **kwargs) -> list[str]:  # Locust that gives up
            return [sys.executable, "-c", "print('OSError: [Errno 24] Too many open files'); "
                    f"raise SystemExit({self.code})"]

    for code, words in ((1, "exited with code 1"), (0, "stopped")):
        run_dir = tmp_path / f"run-{code}"
        run_dir.mkdir()
        record = record_start("run", {"scenario": "channels"}, {"stack": {}})
        load = DyingLoad(duration_s=30, code=code)
        assert drive(ExternalSide("http://127.0.0.1:9"), load, run_dir, record, report=False,
                     history_source="run") == EXIT_RUN_FAILED
        reason = record["exit"]["reason"]
        assert record["status"] == "incomplete" and words in reason, reason
        assert "of the 30 s asked" in reason and "Too many open files" in reason
