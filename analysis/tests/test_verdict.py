"""Regression verdicts on synthetic samples, the four output formats, exit codes, thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from analysis.catalog import COMPARED
from analysis.tracker_format import TRACKER_FORMATS
from analysis.verdict import (
    INSUFFICIENT,
    OK,
    REGRESSION,
    Thresholds,
    ThresholdsError,
    compare,
    exit_code,
    judge,
    read_thresholds,
)
from analysis.verdict_format import FORMATS

FAMILY = len(COMPARED)

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(42)


def noisy(center: float, n: int = 8, spread: float = 0.02) -> list[float]:
    return list(center * (1 + RNG.normal(0, spread, n)))


def test_clear_shift_is_flagged():
    v = judge("delivery_latency_p99", noisy(100), noisy(130), "lower", 0.10, 0.05)
    assert v.status == REGRESSION and v.p_value < 0.01 and v.change == pytest.approx(0.3, abs=0.05)


def test_equal_distributions_are_not_flagged():
    v = judge("delivery_latency_p99", noisy(100), noisy(100), "lower", 0.10, 0.05)
    assert v.status == OK


def test_significant_shift_under_the_threshold_is_not_flagged():
    v = judge("delivery_latency_p99", noisy(100, 30, 0.005), noisy(105, 30, 0.005), "lower",
              0.10, 0.05)
    assert v.status == OK and "within" in v.explanation


def test_big_but_noisy_change_is_within_noise():
    base = [100, 200, 50, 300, 80, 150]
    cand = [130, 260, 60, 380, 90, 210]
    assert judge("m", base, cand, "lower", 0.10, 0.05).status == OK


def test_too_few_samples_say_so():
    v = judge("delivery_latency_p99", [100, 101, 99], [150, 151, 149], "lower", 0.10, 0.05)
    assert v.status == INSUFFICIENT and "cannot show significance" in v.explanation


def test_higher_is_better_metrics_regress_downwards():
    assert judge("throughput_requests", noisy(1000), noisy(800), "higher", 0.1, 0.05).status \
        == REGRESSION
    assert judge("throughput_requests", noisy(1000), noisy(1200), "higher", 0.1, 0.05).status \
        != REGRESSION


def summary(p99: float, lost: int = 0, saturated: bool = False, windows=None) -> dict:
    metrics = {"delivery_latency_p99": {"value": p99}, "lost_messages": {"value": lost},
               "duplicate_messages": {"value": 0}, "error_rate": {"value": 0.0},
               "throughput_requests": {"value": 1000.0}}
    return {"schema_version": 1, "run": f"r{p99}", "loadgen_saturated": saturated,
            "metrics": metrics, "windows": {"series": {"delivery_latency_p99": windows or []}}}


def side(center: float, n: int = 5, **kw) -> list[dict]:
    return [summary(v, **kw) for v in noisy(center, n)]


CASES = {
    "pass": (side(100), side(101), 0),
    "regression": (side(100), side(140), 1),
    "lost": (side(100), side(100, lost=3), 1),
    "void": (side(100), side(140, saturated=True), 2),  # a saturated generator voids all
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exit_codes(case):
    base, cand, code = CASES[case]
    assert exit_code(compare(base, cand, Thresholds())) == code


def test_windows_are_used_when_repetitions_are_too_few():
    base = [summary(100, windows=noisy(100, 6))]
    cand = [summary(140, windows=noisy(140, 6))]
    verdicts = {v.metric: v for v in compare(base, cand, Thresholds())}
    assert verdicts["delivery_latency_p99"].status == REGRESSION
    assert verdicts["delivery_latency_p99"].method.startswith("10-s windows")
    assert verdicts["throughput_requests"].status == OK  # 0 % change needs no test


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - set(TRACKER_FORMATS)))  # their own test
def test_every_format_explains_every_verdict(case, fmt):
    base, cand, code = CASES[case]
    verdicts = compare(base, cand, Thresholds())
    out = FORMATS[fmt](verdicts, "base", "cand")
    for v in verdicts:
        assert v.metric in out
    if fmt == "junit":
        root = ET.fromstring(out.split("?>", 1)[1])
        assert root.tag == "testsuite" and len(root.findall("testcase")) == len(verdicts)
        flagged = sum(v.status in ("regression", "gate failed") for v in verdicts)
        assert int(root.get("failures")) == flagged and (flagged > 0) == (case != "pass")
        assert int(root.get("errors")) == (1 if case == "void" else 0)
    elif fmt == "json":
        assert json.loads(out)["exit_code"] == code
    elif fmt == "text":
        assert f"(exit {code})" in out.splitlines()[0]
    else:
        assert out.startswith("### ") and "| metric | verdict |" in out


def test_thresholds_defaults_overrides_and_malformed(tmp_path):
    assert read_thresholds(None).for_metric("delivery_latency_p99") == 0.10
    good = tmp_path / "t.toml"
    good.write_text("[defaults]\nthreshold = 0.05\nalpha = 0.01\n"
                    "[metrics.delivery_latency_p99]\nthreshold = 0.25\n")
    t = read_thresholds(good)
    assert (t.for_metric("delivery_latency_p99"), t.for_metric("error_rate"), t.alpha) == \
        (0.25, 0.05, 0.01)
    for text, words in [("[defaults\n", "not valid TOML"),
                        ("[metrics.p99]\nthreshold = 0.1\n", "unknown metric"),
                        ("[defaults]\nthreshold = '10%'\n", "must be a number"),
                        ("[defaults]\nthreshold = -1\n", "must be a number"),
                        ("[metrics.error_rate]\nlimit = 1\n", "exactly one key"),
                        ("[misc]\n", "unknown section")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ThresholdsError, match=words):
            read_thresholds(bad)


def test_cli_exit_codes_and_malformed_thresholds(tmp_path):
    def write(name, summaries):
        path = tmp_path / name
        path.write_text(json.dumps({"schema_version": 1, "kind": "baseline", "runs": summaries}))
        return path

    base, cand = write("base.json", side(100)), write("cand.json", side(140))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pollbench", "compare", *map(str, args)],
                              capture_output=True, text=True, cwd=REPO, timeout=60)

    assert run(base, base).returncode == 0
    proc = run(base, cand, "--format", "junit")
    assert proc.returncode == 1 and ET.fromstring(proc.stdout.split("?>", 1)[1]).tag == \
        "testsuite"
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\nthreshold = 'x'\n")
    proc = run(base, cand, "--thresholds", bad)
    assert proc.returncode == 2 and "must be a number" in proc.stderr
    proc = run(base, tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# -- many metrics at once: Holm, and what a passing check could have missed -------------------

def every_metric_side(rng, n: int, shift: dict | None = None, spread: float = 0.05) -> list[dict]:
    """``n`` repetitions of every compared metric (the catalog's FAMILY): independent noise around 100 (or a
    throughput of 1000), each metric moved by ``shift[metric]`` (relative)."""

    out = []
    for i in range(n):
        metrics: dict[str, dict[str, float]] = {"lost_messages": {"value": 0}, "duplicate_messages": {"value": 0}}
        for m in COMPARED:
            center = 0.0005 if m == "error_rate" else 100.0
            center *= 1 + (shift or {}).get(m, 0.0)
            metrics[m] = {"value": float(center * (1 + rng.normal(0, spread)))}
        out.append({"schema_version": 1, "run": f"r{i}", "metrics": metrics,
                    "loadgen_saturated": False, "yardstick": "same"})
    return out


def test_holm_keeps_the_false_alarm_rate_of_a_whole_check_under_alpha():
    # A/A checks of every compared metric (16: latencies, throughput, reuse, cost), noisy, with
    # no threshold to hide behind: tested one by one at 0.05, some metric of most checks would
    # look significant; Holm keeps whole checks at 5 %.
    rng = np.random.default_rng(7)
    limits = Thresholds(default=0.0, per_metric={m: 0.0 for m in COMPARED})
    alarms = unadjusted = 0
    trials = 200
    for _ in range(trials):
        verdicts = compare(every_metric_side(rng, 8), every_metric_side(rng, 8), limits)
        tested = [v for v in verdicts if v.family > 1]
        assert len(tested) == FAMILY and all(v.family == FAMILY for v in tested)
        alarms += any(v.status in (REGRESSION, "improvement") for v in tested)
        unadjusted += any(v.p_value is not None and v.p_value < 0.05 for v in tested)
    assert alarms / trials <= 0.08
    assert unadjusted / trials >= 0.25  # what the adjustment saves us from


def test_holm_adjusted_p_values():
    from analysis.verdict import holm

    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_a_real_regression_in_one_of_every_compared_metric_is_still_caught():
    rng = np.random.default_rng(8)
    verdicts = {v.metric: v for v in compare(
        every_metric_side(rng, 8, spread=0.02),
        every_metric_side(rng, 8, {"delivery_latency_p95": 0.20}, spread=0.02), Thresholds())}
    v = verdicts["delivery_latency_p95"]
    assert v.status == REGRESSION and v.p_adjusted < 0.05 and f"Holm over {FAMILY}" in v.explanation
    assert exit_code(list(verdicts.values())) == 1


def test_the_detectable_change_has_the_power_it_claims():
    # a shift of the claimed size, in fresh noise, is found about 80 % of the time
    from scipy.stats import mannwhitneyu

    from analysis.verdict import detectable_factor

    rng = np.random.default_rng(9)
    for n, level in ((8, 0.05 / 11), (6, 0.05)):
        factor = detectable_factor(n, n, level)
        hits = sum(mannwhitneyu(rng.normal(0, 1, n), rng.normal(factor, 1, n)).pvalue < level
                   for _ in range(1000))
        assert 0.72 <= hits / 1000 <= 0.88, (n, level, hits)
    assert detectable_factor(5, 5, 0.05 / 11) == float("inf")  # 2/C(10,5) = 0.008 > 0.0045


def test_a_pass_says_how_large_a_regression_it_could_have_missed():
    rng = np.random.default_rng(10)
    quiet = compare(every_metric_side(rng, 8, spread=0.01),
                    every_metric_side(rng, 8, spread=0.01), Thresholds())
    noisy_check = compare(every_metric_side(rng, 8, spread=0.15),
                          every_metric_side(rng, 8, spread=0.15), Thresholds())
    q = {v.metric: v for v in quiet}["delivery_latency_p95"]
    n = {v.metric: v for v in noisy_check}["delivery_latency_p95"]
    assert q.status == OK and q.detectable < 0.10 and "could have missed up to 10%" in \
        q.explanation  # the threshold, not the noise, bounds a quiet check
    assert n.detectable > 0.25  # noise of 15 % hides changes of 25 % and more
    text = FORMATS["text"](noisy_check, "b", "c")
    assert f"Holm-adjusted over {FAMILY} metrics" in text
    row = next(line for line in text.splitlines() if line.startswith("delivery_latency_p95"))
    assert f"{n.detectable:.0%}" in row


def test_six_repetitions_are_the_fewest_that_can_flag_one_of_every_compared_metric():
    from analysis.verdict import min_samples

    assert FAMILY == 16  # 2 / C(12, 6) = 0.0022 < 0.05 / 16 < 2 / C(10, 5)
    assert min_samples(0.05) == 4 and min_samples(0.05 / FAMILY) == 6
    rng = np.random.default_rng(11)
    base, cand = list(100 + rng.normal(0, 1, 5)), list(150 + rng.normal(0, 1, 5))
    v = judge("delivery_latency_p95", base, cand, "lower", 0.10, 0.05, family=FAMILY)
    assert v.status == INSUFFICIENT and "need 6 per side" in v.explanation
    assert judge("delivery_latency_p95", base + [100.0], cand + [150.0], "lower", 0.10, 0.05,
                 family=FAMILY).status == REGRESSION


def test_interleaved_pairs_cancel_drift_that_hides_a_regression_from_an_unpaired_test():
    # each round's machine speed drifts by 15 %; both runs of a round share it
    rng = np.random.default_rng(12)

    base, cand = [], []
    for i in range(12):
        speed = 1 + rng.normal(0, 0.15)
        for side_runs, shift in ((base, 0.0), (cand, 0.20)):
            metrics = {m: {"value": float(100 * speed * (1 + rng.normal(0, 0.01)) *
                                          (1 + (shift if m == "delivery_latency_p95" else 0)))}
                       for m in COMPARED}
            side_runs.append({"schema_version": 1, "run": f"r{i}", "metrics": metrics,
                              "yardstick": "same"})
    unpaired = {v.metric: v for v in compare(base, cand, Thresholds())}
    paired = {v.metric: v for v in compare(base, cand, Thresholds(), paired=True)}
    assert unpaired["delivery_latency_p95"].status == OK  # lost in the drift
    v = paired["delivery_latency_p95"]
    assert v.status == REGRESSION and v.method == "interleaved pairs"
    assert "Wilcoxon signed-rank" in v.explanation
    assert paired["delivery_latency_p95"].detectable < unpaired["delivery_latency_p95"].detectable
    assert all(paired[m].status == OK for m in COMPARED if m != "delivery_latency_p95")
    assert "Wilcoxon signed-rank's over the interleaved pairs" in FORMATS["text"](
        list(paired.values()), "b", "c")


def cost_side(rng, drift, shift: dict | None = None, noise: float = 0.03) -> list[dict]:
    """Interleaved rounds of the stack's and the load generator's cost per delivery (each
    round's machine speed ``drift`` shared by both sides), every other metric steady."""
    out = []
    for i, d in enumerate(drift):
        metrics = {m: {"value": 0.0 if m == "error_rate" else 100.0} for m in COMPARED}
        for m in ("cpu_per_kdelivery_stack", "cpu_per_kdelivery_backends",
                  "cpu_per_kdelivery_nginx", "cpu_per_kdelivery_loadgen"):
            value = 0.8 * d * (1 + (shift or {}).get(m, 0.0)) * (1 + rng.normal(0, noise))
            metrics[m] = {"value": value}
        out.append({"schema_version": 1, "run": f"r{i}", "metrics": metrics,
                    "loadgen_saturated": False})
    return out


def test_a_five_percent_cost_regression_is_caught_and_the_load_generators_cost_only_shown():
    rng = np.random.default_rng(38)
    drift = 1 + rng.normal(0, 0.10, 22)  # the machine drifts 10 % between rounds
    base = cost_side(rng, drift)
    worse = cost_side(rng, drift, {"cpu_per_kdelivery_backends": 0.05,
                                   "cpu_per_kdelivery_stack": 0.04})
    verdicts = {v.metric: v for v in compare(base, worse, Thresholds(), paired=True)}
    v = verdicts["cpu_per_kdelivery_backends"]
    assert v.status == REGRESSION and v.threshold == 0.03, v.explanation
    assert v.method == "interleaved pairs"
    assert exit_code(list(verdicts.values())) == 1
    # the instrument's own cost: shown with its change, never a verdict
    heavier_instrument = cost_side(rng, drift, {"cpu_per_kdelivery_loadgen": 0.50})
    verdicts = compare(base, heavier_instrument, Thresholds(), paired=True)
    shown = next(v for v in verdicts if v.metric == "cpu_per_kdelivery_loadgen")
    assert shown.status == "shown" and shown.change > 0.3
    assert exit_code(verdicts) == 0
    text = FORMATS["text"](verdicts, "b", "c")
    assert "cpu_per_kdelivery_loadgen" in text and "never judged" in text
    # a thresholds file can still set a cost metric's own threshold
    assert Thresholds(per_metric={"cpu_per_kdelivery_backends": 0.2}).for_metric(
        "cpu_per_kdelivery_backends") == 0.2


def speed_side(rng, shift: float, yardstick: str | None = "y1") -> list[dict]:
    """22 runs on a shared VM whose speed changes from run to run (sd 12 %, the same factor
    for every process of a run), each component's cost per delivery with 2 % noise of its
    own; the backends' cost ``shift`` heavier."""
    out = []
    for i in range(22):
        speed = 1 + rng.normal(0, 0.12)
        cpu = {c: base * speed * (1 + rng.normal(0, 0.02)) for c, base in
               (("backends", 0.40 * (1 + shift)), ("nginx", 0.08), ("loadgen", 0.13))}
        metrics = {m: {"value": 0.0 if m == "error_rate" else 100.0} for m in COMPARED}
        metrics["cpu_per_kdelivery_backends"] = {"value": cpu["backends"]}
        metrics["cpu_per_kdelivery_stack"] = {"value": cpu["backends"] + cpu["nginx"]}
        metrics["cpu_per_kdelivery_nginx"] = {"value": cpu["nginx"]}
        metrics["cpu_relative_backends"] = {
            "value": cpu["backends"] / (cpu["nginx"] + cpu["loadgen"])}
        out.append({"schema_version": 1, "run": f"r{i}", "metrics": metrics,
                    "loadgen_saturated": False, "yardstick": yardstick})
    return out


def test_a_cost_regression_lost_in_the_machines_speed_is_caught_against_the_yardstick():
    rng = np.random.default_rng(3805)
    base, worse = speed_side(rng, 0.0), speed_side(rng, 0.06)
    verdicts = {v.metric: v for v in compare(base, worse, Thresholds(), paired=True)}
    # per delivery the 6 % drowns in the speed's 12 %; per CPU-second of the yardstick not
    assert verdicts["cpu_per_kdelivery_backends"].status == OK
    v = verdicts["cpu_relative_backends"]
    assert v.status == REGRESSION and v.threshold == 0.03, v.explanation
    assert v.detectable < verdicts["cpu_per_kdelivery_backends"].detectable / 2
    assert exit_code(list(verdicts.values())) == 1
    # the same runs with the load generator or nginx changed on one side: the ratio is no
    # cost any more, so it is not judged (and not counted in Holm's family), and says why
    other = [{**s, "yardstick": "y2"} for s in worse]
    verdicts = {v.metric: v for v in compare(base, other, Thresholds(), paired=True)}
    v = verdicts["cpu_relative_backends"]
    assert v.status == "not measured" and "yardstick differs" in v.explanation
    assert v.p_value is None and verdicts["cpu_per_kdelivery_backends"].family == sum(
        1 for x in verdicts.values() if x.p_value is not None)
    assert exit_code(list(verdicts.values())) == 0
    # runs that do not record a yardstick (an older pollbench): not judged either
    old = [{**s, "yardstick": None} for s in base]
    v = next(v for v in compare(old, worse, Thresholds(), paired=True)
             if v.metric == "cpu_relative_backends")
    assert v.status == "not measured" and "does not record its yardstick" in v.explanation
