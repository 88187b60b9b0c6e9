"""The capacity check before a run: a load the stack cannot hold is named before anything
starts, with the limit, the need and a profile that holds it; a load that fits says nothing."""

from __future__ import annotations

import os

import pytest

from pollbench.stack import capacity
from pollbench.stack.loadgen import LoadSpec
from pollbench.stack.preflight import load_fits
from pollbench.stack.spec import StackSpec


def warnings(profile: str, **load) -> list[str]:
    resolved = StackSpec(profile=profile).resolve(check_ports=False, claim=False)
    try:
        return load_fits(resolved, LoadSpec(**load))
    finally:
        resolved.release()


def test_the_seed_cannot_hold_a_thousand_polls_and_says_which_profile_can():
    [line] = warnings("seed", users=1001, channels=100)
    assert "needs about 2,016 nginx connections" in line
    assert "profile seed allows 1,024 (1 worker(s) x 1,024 worker_connections)" in line
    assert line.endswith("--profile longpoll holds it")
    [line] = warnings("shared", users=1001, channels=100)  # the same, with shared state
    assert line.endswith("--profile longpoll-shared holds it")


@pytest.mark.parametrize("profile,users", [("seed", 200), ("longpoll", 1001), ("scale", 18001)])
def test_a_load_that_fits_gets_no_warning(profile, users):
    assert warnings(profile, users=users, channels=100) == []


def test_one_hot_channel_on_one_backend_passes_its_waiter_limit():
    """Key-hash routing with local state puts a channel's subscribers on one backend."""
    lines = warnings("longpoll", users=19001, channels=1)
    assert any("about 19,000 polls would wait on one backend; each holds at most 18,000" in w
               for w in lines), lines
    # shared state: any backend answers, the polls spread over the four
    assert not any("wait on one backend" in w
                   for w in warnings("longpoll-shared", users=19001, channels=1))


def test_a_locust_process_past_its_descriptor_limit_is_told_to_add_workers():
    lines = warnings("scale", users=30001, channels=100)
    assert any("each Locust process would hold about" in w and "add --workers" in w
               for w in lines), lines
    assert not any("each Locust process" in w
                   for w in warnings("scale", users=30001, channels=100, workers=2))


def sized(profile: str, caplog, **load) -> tuple[int, int, str, list[str]]:
    """What the preflight chooses for ``load``: (Locust processes, nginx workers, what it
    said, what it warned of), without starting anything."""
    import logging

    from pollbench.stack.preflight import preflight

    with caplog.at_level(logging.INFO, logger="pollbench"):
        checked = preflight(StackSpec(profile=profile), LoadSpec(**load), check_ports=False,
                            warn=False)
    try:
        assert checked.load is not None
        return (checked.load.workers, checked.resolved.settings["worker_processes"],
                caplog.text, checked.warnings)
    finally:
        checked.resolved.release()


def test_the_run_sizes_its_locust_processes_and_nginx_workers_for_100000_held_polls(
        caplog, monkeypatch):
    """100,000 subscribers: one Locust process holds at most its descriptor limit of
    sockets, one nginx worker its own of connections (2 a proxied poll); the run chooses as
    many of each as the count needs and says so, and the profile `scale` lets it raise the
    nginx workers (its fit_workers)."""
    monkeypatch.setattr(capacity, "locust_fd_limit", lambda: 10_000)
    load = dict(users=100_001, channels=100, poll_timeout_s=120)
    locust, nginx, said, warned = sized("scale", caplog, **load)
    assert locust == 11  # 100,001 / (10,000 - 64 kept for the process itself)
    assert "the run uses 11 Locust processes (--workers 11)" in said
    # its own choice is not warned of as if the user had asked for too many processes
    assert not [w for w in warned if "on a machine with" in w], warned
    assert nginx == 12  # 200,016 connections / 18,000 (90 % of worker_rlimit_nofile 20,000)
    assert "the run uses 12 nginx workers (worker_processes = 12" in said
    # workers asked for are kept (the capacity check warns); a profile without fit_workers
    # keeps its own count of nginx workers
    locust, nginx, _, warned = sized("longpoll", caplog, **{**load, "workers": 3})
    assert (locust, nginx) == (3, 2)
    if (os.cpu_count() or 1) < 3:
        assert [w for w in warned if "--workers 3 on a machine with" in w], warned
    assert sized("scale", caplog, users=1_000, channels=10)[:2] == (0, 4)  # fits as it is


def test_the_stacks_redis_is_checked_against_its_maxclients():
    def redis_warnings(maxclients: int) -> list[str]:
        resolved = StackSpec(profile="shared", redis_overrides={"maxclients": maxclients}
                             ).resolve(check_ports=False, claim=False)
        try:
            return load_fits(resolved, LoadSpec(users=50, channels=10))
        finally:
            resolved.release()

    [line] = redis_warnings(100)
    assert line.startswith("the backends may open about 261 Redis connections (4 x 65")
    assert "maxclients is 100" in line and "raise maxclients" in line
    assert redis_warnings(10000) == []


def test_the_busiest_backend_is_counted_from_the_hash_nginx_itself_uses(stack_up):
    """Local state routes a channel by nginx's consistent hash of its name: the preflight's
    ring must send every channel where the real nginx does, and so count the busiest
    backend (an even share undercounted it: nginx then ran out of ports to it)."""
    import json
    import urllib.request

    from pollbench.stack.capacity import chash_backend, chash_ring

    up = stack_up()

    def channels_held() -> list[int]:
        return [json.loads(urllib.request.urlopen(f"{u}/stats", timeout=5).read())["channels"]
                for u in up.backend_urls]

    backend_port = int(up.backend_urls[0].rsplit(":", 1)[1])
    ring = chash_ring([f"127.0.0.1:{backend_port + i}" for i in range(4)])
    for i in range(24):
        before = channels_held()
        req = urllib.request.Request(f"{up.url}/channels/ch{i}", data=b"{}", method="POST")
        assert urllib.request.urlopen(req, timeout=5).status == 201
        after = channels_held()
        owner = [b for b in range(4) if after[b] > before[b]]
        assert owner == [chash_backend(f"ch{i}", ring)], (i, owner)
    # 2,500 subscribers on 10 channels: the busiest backend holds far more than a quarter
    load = LoadSpec(users=2501, channels=10, publish_rate=5)
    busiest = capacity.polls_per_backend({"backends": 4, "balance": "key-hash"}, "local", load,
                                         backend_port)
    held = [0] * 4
    for i in range(10):
        held[chash_backend(f"ch{i}", ring)] += 250
    assert busiest == max(held) > 2500 / 4
