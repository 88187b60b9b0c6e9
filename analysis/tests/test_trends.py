"""The history's second step detector, E-Divisive means with a t-test, on series whose steps
are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.trends import edivisive_breaks, steps


def table(values) -> pd.DataFrame:
    return pd.DataFrame({"run_key": [f"r{i}" for i in range(len(values))],
                         "started_at": np.arange(len(values), dtype=float),
                         "commit": [f"c{i:02d}" for i in range(len(values))],
                         "machine": "m", "value": values})


def noisy(n: int, seed: int, sd: float = 0.02) -> np.ndarray:
    return 100 * (1 + np.random.default_rng(seed).normal(0, sd, n))


@pytest.mark.parametrize("seed", range(5))
def test_noise_alone_has_no_step(seed):
    assert steps("delivery_latency_p50", table(noisy(30, seed)), "edivisive") == []


def test_a_step_is_found_at_its_commit_with_its_size():
    values = noisy(30, 7)
    values[12:] *= 1.2
    [step] = steps("delivery_latency_p50", table(values), "edivisive")
    assert (step.before_commit, step.after_commit) == ("c11", "c12")
    assert step.change == pytest.approx(0.2, abs=0.03) and step.worse() is True


def test_two_steps_and_a_way_back_are_all_found():
    values = noisy(45, 3)
    values[15:30] *= 1.25  # worse at c15, back at c30
    assert edivisive_breaks(values) == [15, 30]
    found = steps("delivery_latency_p50", table(values), "edivisive")
    assert [(s.after_commit, s.worse()) for s in found] == [("c15", True), ("c30", False)]


def test_an_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="one of pelt, edivisive"):
        steps("delivery_latency_p50", table(noisy(10, 1)), "cusum")
