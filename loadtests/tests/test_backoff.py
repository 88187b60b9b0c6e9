"""Clients back off after failures as real long-poll clients do (loadtests/options.py)."""

from __future__ import annotations

import random

import pytest

from loadtests.options import Backoff, check_load, parse_backoff


def test_waits_double_up_to_the_cap_with_jitter_and_a_success_starts_over():
    b = Backoff(0.1, 5.0, random.Random(7))
    waits = [b.next_delay() for _ in range(10)]
    caps = [min(5.0, 0.1 * 2 ** i) for i in range(10)]
    assert all(cap / 2 <= w <= cap for w, cap in zip(waits, caps, strict=True))
    assert len({round(w / cap, 6) for w, cap in zip(waits, caps, strict=True)}) > 1  # jitter
    assert sum(waits[6:]) >= 4 * 2.5  # a storm thins out: at least 2.5 s per retry at the cap
    b.reset()
    assert b.next_delay() <= 0.1


def test_zero_retries_at_once_for_storm_experiments():
    b = Backoff(*parse_backoff("0"), random.Random(1))
    assert [b.next_delay() for _ in range(3)] == [0.0, 0.0, 0.0] and b.failures == 3


@pytest.mark.parametrize("bad", ["5:1", "0:5", "x", "1", "-1:2", "1:1000", "nan:1"])
def test_a_bad_backoff_is_refused_naming_the_option(bad):
    with pytest.raises(ValueError, match="--retry-backoff: retry back-off must be MIN:MAX"):
        check_load(users=10, spawn_rate=None, user_classes=["TaskPoller"], channels=1,
                   publish_rate=1, poll_timeout_s=5, max_poll_timeout_s=10,
                   task_duration_ms=0, connection="keepalive", retry_backoff=bad)
