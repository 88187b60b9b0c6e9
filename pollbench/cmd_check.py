"""``pollbench check``: the CI performance gate.  Run the CI scenario N times, compare with the
baseline committed in the repository, exit 0 (pass), 1 (regression) or 2 (broken / void).

    pollbench check                       # compare with results/baselines/ci.json
    pollbench check --update-baseline     # record a new baseline (refuses to overwrite)

Each repetition is a normal run folder under ``results/<time>-check/``.  The
baseline file holds the summaries of its repetitions and the configuration they
ran with; a check whose configuration differs is refused (rerun
``--update-baseline``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pollbench.errors import RunFailed, UserError
from pollbench.loadgen import LoadSpec
from pollbench.rundir import RESULTS_DIR, new_run_dir, write_json_atomic
from pollbench.stack import StackSpec

DEFAULT_BASELINE = RESULTS_DIR / "baselines" / "ci.json"
# The CI scenario: small enough for four repetitions in well under 5 minutes on 2 cores,
# busy enough that delivery latency means something.
CI_LOAD = dict(scenario="channels", users=100, spawn_rate=100.0, duration_s=30.0, channels=10,
               publish_rate=50.0, poll_timeout_s=10.0)
CI_PROFILE = "keepalive"
CI_WARMUP_S = 5.0


def add_parser(sub) -> None:
    from analysis.verdict_format import FORMATS

    p = sub.add_parser("check", help="CI gate: run the CI scenario N times and compare with the "
                       "committed baseline (exit 0/1/2)", description=__doc__)
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE,
                   help=f"baseline file (default {DEFAULT_BASELINE.relative_to(RESULTS_DIR.parent)})")
    p.add_argument("--repeat", type=int, default=4,
                   help="repetitions (4 is the fewest a Mann-Whitney test can decide on)")
    p.add_argument("--thresholds", type=Path, default=None)
    p.add_argument("--format", choices=sorted(FORMATS), default="text")
    p.add_argument("--output", type=Path, default=None, help="verdict file (default stdout)")
    p.add_argument("--update-baseline", action="store_true", help="record a new baseline")
    p.add_argument("--force", action="store_true", help="with --update-baseline: overwrite")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend-port", type=int, default=8000)
    p.add_argument("--delivery-delay-ms", type=float, default=0.0,
                   help="inject a fixed delay into every delivery (to prove the gate works)")
    p.set_defaults(func=lambda a: check(a.baseline, a.repeat, a.thresholds, a.format, a.output,
                                       a.update_baseline, a.force, a.port, a.backend_port,
                                       a.delivery_delay_ms))


def ci_config(delivery_delay_ms: float = 0.0) -> dict:
    return {"profile": CI_PROFILE, "load": CI_LOAD, "warmup_s": CI_WARMUP_S,
            "delivery_delay_ms": delivery_delay_ms}


def run_repetitions(repeat: int, port: int, backend_port: int, delivery_delay_ms: float,
                    label: str) -> list[dict]:
    """Run the CI scenario ``repeat`` times; return each repetition's summary."""
    from analysis.figures import compute
    from analysis.load import load_run
    from pollbench.cmd_run import run

    root = new_run_dir(label)
    summaries = []
    for i in range(repeat):
        spec = StackSpec(profile=CI_PROFILE, port=port, backend_port=backend_port,
                         delivery_delay_ms=delivery_delay_ms)
        load = LoadSpec(**CI_LOAD)
        print(f"== repetition {i + 1} of {repeat}", flush=True)
        code = run(spec, load, out=root / f"rep-{i + 1}", report=False)
        if code != 0:
            raise RunFailed(f"repetition {i + 1} ended with code {code}")
        summaries.append(compute(load_run(root / f"rep-{i + 1}"), CI_WARMUP_S).summary)
    return summaries


def check(baseline: Path, repeat: int, thresholds: Path | None, fmt: str, output: Path | None,
          update: bool, force: bool, port: int, backend_port: int,
          delivery_delay_ms: float) -> int:
    from analysis.verdict import ThresholdsError, compare, exit_code, read_thresholds
    from analysis.verdict_format import FORMATS

    if repeat < 1 or repeat > 50:
        raise UserError(f"--repeat must be from 1 to 50 (it is {repeat})")
    if force and not update:
        raise UserError("--force goes with --update-baseline")
    try:
        limits = read_thresholds(thresholds)
    except ThresholdsError as e:
        raise UserError(str(e)) from None
    config = ci_config(delivery_delay_ms)
    StackSpec(profile=CI_PROFILE, port=port, backend_port=backend_port).validate()
    if update:
        if baseline.exists() and not force:
            raise UserError(f"{baseline} exists; pass --force to replace the baseline")
        started = time.time()
        summaries = run_repetitions(repeat, port, backend_port, delivery_delay_ms,
                                    "baseline")
        baseline.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(baseline, {"schema_version": 1, "kind": "baseline",
                                     "created_at": started, "config": config,
                                     "runs": summaries})
        print(f"baseline written: {baseline} ({repeat} repetitions)")
        return 0
    if not baseline.is_file():
        raise UserError(f"no baseline at {baseline}: record one with pollbench check "
                        "--update-baseline")
    try:
        recorded = json.loads(baseline.read_text())
    except ValueError as e:
        raise UserError(f"{baseline} is not valid JSON ({e})") from None
    if recorded.get("schema_version") != 1 or recorded.get("kind") != "baseline":
        raise UserError(f"{baseline} is not a pollbench baseline (schema_version 1)")
    wanted = {k: v for k, v in config.items() if k != "delivery_delay_ms"}
    had = {k: v for k, v in recorded.get("config", {}).items() if k != "delivery_delay_ms"}
    if wanted != had:
        raise UserError(f"{baseline} was recorded with another CI scenario ({had}); record a "
                        "new one with pollbench check --update-baseline --force")
    candidate = run_repetitions(repeat, port, backend_port, delivery_delay_ms, "check")
    verdicts = compare(recorded["runs"], candidate, limits)
    text = FORMATS[fmt](verdicts, str(baseline), f"this checkout ({repeat} repetitions)")
    if output:
        from pollbench.rundir import write_atomic

        write_atomic(output, text)
        print(f"verdict written to {output}")
    sys.stdout.write(text if not output or fmt == "text" else "")
    return exit_code(verdicts)
