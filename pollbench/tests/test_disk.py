"""A run folder sized for days: nginx's access log full, sampled or off (reuse figures kept),
a disk budget checked before the start, and a run that stops cleanly when the disk fills."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pandas as pd
import pytest

from analysis.figures import compute, requests_per_client_connection
from analysis.load import load_run
from pollbench.records.runinfo import validate_run_json
from pollbench.stack import nginx_config
from pollbench.stack.disk import choose_access_log, estimate, human, parse_size
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.processes import wait_until
from pollbench.tests.conftest import REPO, pollbench_cmd, run_cmd

SOAK = LoadSpec(users=1000, publish_rate=40, channels=10, duration_s=24 * 3600)


def test_short_runs_keep_the_full_log_and_a_day_long_soak_fits_in_a_few_gb():
    assert choose_access_log(LoadSpec(), backends=4) == "full"
    assert choose_access_log(LoadSpec(users=1000, publish_rate=40, duration_s=360),
                             backends=4) == "full"
    mode = choose_access_log(SOAK, backends=4)
    assert mode == "sampled-100"
    per_hour = estimate(SOAK, backends=4, access_log=mode)
    day = sum(per_hour.values()) * 24
    full_day = sum(estimate(SOAK, backends=4, access_log="full").values()) * 24
    # ~4,000 requests/s: a full log writes ~140 GB a day, the sampled one a few GB
    assert full_day > 100 * 2**30 and day < 3 * 2**30, (full_day / 2**30, day / 2**30)


def test_sizes_parse_and_nonsense_is_refused_in_one_line():
    assert parse_size("500M") == 500 << 20 and parse_size("2GiB") == 2 << 30
    assert parse_size("4096") == 4096
    proc = subprocess.run(pollbench_cmd("run", "--min-free-disk", "lots"), capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("pollbench: error: size 'lots'")


def test_a_run_that_would_fill_the_disk_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        run_cmd(out, "--users", "1000", "--publish-rate", "40", "--duration", "1h",
                "--access-log", "full", "--min-free-disk",
                f"{shutil.disk_usage(tmp_path).free - (1 << 30)}"),
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    # the estimate (about 4,000 requests/s: 5.5 GiB of access log an hour) against the free
    # space, and what to do
    access = estimate(LoadSpec(users=1000, publish_rate=40), 4, "full")["nginx access log"]
    assert 5 * 2**30 < access < 6 * 2**30
    assert "this run would write about" in line and f"nginx access log {human(access)}" in line
    assert "free" in line and "--access-log sampled-100 or off" in line
    assert not out.exists()


@pytest.mark.parametrize("mode,expected", [
    ("sampled-10", ['"~0$" 1;', "if=$pollbench_logged;"]),
    ("sampled-1000", ['"~000$" 1;']),
    ("off", ["access_log off;"]),
])
def test_the_access_log_modes_render_and_nginx_accepts_them(tmp_path, mode, expected):
    settings = nginx_config.load_profile("seed", {"access_log": mode})
    text = nginx_config.render(settings, nginx_config.RenderPaths.for_prefix(tmp_path),
                               8080, [8000, 8001, 8002, 8003])
    for line in expected:
        assert line in text
    for sub in ("logs", "temp/client_body", "temp/proxy", "temp/fastcgi", "temp/uwsgi",
                "temp/scgi"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "nginx.conf").write_text(text)
    proc = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-p", str(tmp_path),
                           "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def run(out, *args, timeout=180):
    return subprocess.run(
        run_cmd(out, "--poll-timeout", "2", "--duration", "10s", "--users", "30",
                "--channels", "3", "--publish-rate", "20", *args),
        capture_output=True, text=True, cwd=REPO, timeout=timeout)


def reuse(run_dir) -> tuple[float, float]:
    m = compute(load_run(run_dir)).summary["metrics"]
    return (m["requests_per_connection_client"]["value"],
            m["requests_per_connection_upstream"]["value"])


def sampling_error(full, sampled) -> float:
    """The standard error of the mean requests per connection over the connections the
    sampled log kept, drawn from those of the full log (without replacement); 0 without a
    log.  The connections cut short at the end of a run (1-3 requests, serial numbers close
    together) make a one-in-ten sample's mean miss the full one by 7 % now and then."""
    def per_connection(run_dir):
        log = run_dir / "nginx" / "logs" / "access.jsonl"
        if not log.exists():
            return None
        access = pd.read_json(log, lines=True, dtype=False)
        return requests_per_client_connection(access).astype(int)

    everyone, kept = per_connection(full), per_connection(sampled)
    if kept is None or len(kept) < 2:
        return 0.0
    n, total = len(kept), len(everyone)
    return float(everyone.std()) / math.sqrt(n) * math.sqrt((total - n) / (total - 1))


@pytest.mark.slow
def test_sampled_and_off_logs_keep_the_reuse_figures_of_the_full_log(tmp_path):
    # every:4: each client connection carries 4 requests, so reuse is not trivially one
    full = tmp_path / "full"
    proc = run(full, "--access-log", "full", "--connection", "every:4", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, upstream = reuse(full)
    assert 3 < client <= 4
    # the same run as the sampled mode would have logged it: every request of the
    # connections whose serial number ends in 0; and as the off mode: no log at all
    for mode in ("sampled-10", "off"):
        copy = tmp_path / mode
        shutil.copytree(full, copy)
        record = json.loads((copy / "run.json").read_text())
        record["stack"]["nginx"]["access_log"] = mode
        (copy / "run.json").write_text(json.dumps(record))
        log = copy / "nginx" / "logs" / "access.jsonl"
        if mode == "off":
            log.unlink()
        else:
            lines = [ln for ln in log.read_text().splitlines()
                     if int(json.loads(ln)["connection"]) % 10 == 0]
            assert 0 < len(lines) < 0.2 * len(log.read_text().splitlines())
            log.write_text("\n".join(lines) + "\n")
        got_client, got_upstream = reuse(copy)
        assert got_upstream == upstream  # the backends' own counters: exact in every mode
        assert abs(got_client - client) <= max(0.05 * client, 4 * sampling_error(full, copy)), \
            (mode, got_client, client)
    # and for real: a sampled run logs whole connections, one in ten
    sampled = tmp_path / "real-sampled"
    proc = run(sampled, "--access-log", "sampled-10", "--connection", "every:4", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    access = pd.read_json(sampled / "nginx" / "logs" / "access.jsonl", lines=True, dtype=False)
    conns = access["connection"].astype(int)
    assert len(access) and (conns % 10 == 0).all()
    for _, g in access.groupby("connection"):  # each logged connection is whole: 1, 2, .. k
        numbers = sorted(g["connection_requests"].astype(int))
        assert numbers == list(range(1, len(numbers) + 1))
    assert reuse(sampled)[0] == pytest.approx(client, rel=0.2)


@pytest.mark.slow
def test_a_run_stops_cleanly_incomplete_when_the_disk_reaches_its_floor(tmp_path):
    out = tmp_path / "run"
    floor = shutil.disk_usage(tmp_path).free - (60 << 20)  # 60 MiB above the floor now
    proc = subprocess.Popen(
        run_cmd(out, "--poll-timeout", "2", "--duration", "60s", "--users", "20",
                "--min-free-disk", str(floor)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    filler = tmp_path / "filler"
    try:
        assert wait_until(lambda: (out / "metrics" / "progress.json").exists(), 60)
        with open(filler, "wb") as f:  # another writer fills the disk meanwhile
            for _ in range(200):
                f.write(b"\0" * (1 << 20))
            f.flush()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        filler.unlink(missing_ok=True)
    assert proc.returncode == 3, stdout + stderr
    record = json.loads((out / "run.json").read_text())
    validate_run_json(record)
    assert record["status"] == "incomplete"
    assert record["exit"]["reason"].startswith("stopped: free disk space on ")
    assert "(--min-free-disk)" in stderr
    assert record["duration_s"] < 50  # stopped, not run to its end
    # what it recorded until then is whole: every line of the lossless log parses
    for line in (out / "metrics" / "latency.hdr.jsonl").read_text().splitlines():
        json.loads(line)
