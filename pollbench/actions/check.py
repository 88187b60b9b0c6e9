"""The CI gate (``pollbench check``, whose help describes it): the CI scenario repeated,
against a committed baseline or, with ``--baseline-ref``, against a revision rerun in
alternation; the verdict's exit code is returned."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from analysis.catalog import EXIT_OK
from pollbench import paths
from pollbench.actions.compare import baseline_runs
from pollbench.errors import RunFailed, UserError
from pollbench.log import log
from pollbench.records.history import HISTORY_OFF
from pollbench.records.inputs import check_output_file, read_json
from pollbench.records.rundir import new_run_dir, write_atomic, write_json_atomic
from pollbench.records.runinfo import (
    fingerprint_differences,
    machine_fingerprint,
    software_versions,
)
from pollbench.stack.loadgen import LoadSpec, check_number
from pollbench.stack.preflight import preflight
from pollbench.stack.spec import StackSpec

# The CI scenario: small enough for four repetitions in well under 5 minutes on 2 cores,
# busy enough that delivery latency means something.
# Many short repetitions beat few long ones: the spread between runs of the CI scenario is
# 10-19 % whether they last 4 or 30 s (benchmarks/check_design.py), so the check buys rounds,
# not seconds.  A 4-s run costs about 5.5 s with the stack's start and stop; 22 interleaved
# rounds take about 4 minutes.
CI_LOAD: dict[str, Any] = dict(scenario="channels", users=100, spawn_rate=100.0, duration_s=4.0,
                               channels=10, publish_rate=50.0, poll_timeout_s=10.0)
CI_PROFILE = "keepalive"
CI_WARMUP_S = 1.0
CI_REPEAT = 22


def default_baseline() -> Path:
    return paths.results_dir() / "baselines" / "ci.json"


# the known regressions a check can inject into its candidate (StackSpec fields), to prove
# that it catches them: a delay on every delivery, and CPU burnt on every answered poll
INJECTED = ("delivery_delay_ms", "burn_us")


def ci_config(injected: dict[str, float] | None = None) -> dict:
    return {"profile": CI_PROFILE, "load": CI_LOAD, "warmup_s": CI_WARMUP_S,
            **{k: (injected or {}).get(k, 0.0) for k in INJECTED}}


def _summary(run_dir: Path, warmup_s: float = CI_WARMUP_S) -> dict:
    from analysis.figures import compute
    from analysis.load import load_run

    return compute(load_run(run_dir), warmup_s).summary


def run_candidate(out: Path, port: int, backend_port: int, injected: dict[str, float]) -> dict:
    from pollbench.actions.run import run

    spec = StackSpec(profile=CI_PROFILE, port=port, backend_port=backend_port,
                     delivery_delay_ms=injected.get("delivery_delay_ms", 0.0),
                     burn_us=injected.get("burn_us", 0.0))
    code = run(spec, LoadSpec(**CI_LOAD), out=out, report=False, history_source="check",
               warmup_s=CI_WARMUP_S)
    if code != EXIT_OK:
        raise RunFailed(f"{out.name} ended with code {code}")
    return _summary(out)


def run_repetitions(repeat: int, port: int, backend_port: int, injected: dict[str, float],
                    label: str) -> list[dict]:
    """Run the CI scenario ``repeat`` times; return each repetition's summary."""
    root = new_run_dir(label)
    summaries = []
    for i in range(repeat):
        log.info(f"== repetition {i + 1} of {repeat}")
        summaries.append(run_candidate(root / f"rep-{i + 1}", port, backend_port, injected))
    return summaries


def record_side_run(out: Path, git: dict | None) -> None:
    """Append one side's repetition to the history as the revision it ran (``git``: the base
    revision's; None: the run's own record, this checkout's)."""
    from pollbench.records.runrecord import store_in_history

    record = json.loads((out / "run.json").read_text())
    # the base revision's pollbench may not record it: the check judged it at its warm-up
    record["warmup_s"] = CI_WARMUP_S
    store_in_history(record, out, "check", git=git)


def ci_run_arguments(port: int, backend_port: int, duration_s: float | None = None) -> list[str]:
    """``pollbench run``'s options for the CI scenario (``duration_s``: another length)."""
    load = CI_LOAD
    return ["--profile", CI_PROFILE, "--scenario", load["scenario"], "--users",
            str(load["users"]), "--spawn-rate", f"{load['spawn_rate']:g}", "--duration",
            f"{duration_s or load['duration_s']:g}s", "--channels", str(load["channels"]), "--publish-rate",
            f"{load['publish_rate']:g}", "--poll-timeout", f"{load['poll_timeout_s']:g}",
            "--port", str(port), "--backend-port", str(backend_port), "--no-report"]


def resolve_ref(ref: str, repo: Path | None = None) -> str:
    """The commit ``ref`` names in this checkout, or in ``repo`` (refused in one line when
    none)."""
    import subprocess

    repo = repo or paths.repository()
    rev = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=repo,
                         capture_output=True, text=True)
    if rev.returncode != 0:
        raise UserError(f"--baseline-ref {ref!r} is not a commit of {repo}")
    return rev.stdout.strip()


def _git(*args: str, repo: Path | None = None) -> str | None:
    """``git args`` in the checkout (or ``repo``): its output, or None when git fails."""
    import subprocess

    proc = subprocess.run(["git", *args], cwd=repo or paths.repository(), capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def default_branch(repo: Path | None = None) -> str | None:
    """The default branch's ref: origin's HEAD, else origin/main or master, else a local
    main or master."""
    head = _git("symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD", repo=repo)
    if head:
        return head
    for ref in ("origin/main", "origin/master", "main", "master"):
        if _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", repo=repo):
            return ref
    return None


def default_base(repo: Path | None = None) -> tuple[str, str]:
    """The revision ``check`` compares with when given none, and why: the merge-base of this
    checkout (or ``repo``) with the default branch; on the default branch itself
    (merge-base = HEAD), the commit before HEAD."""
    if _git("rev-parse", "--is-inside-work-tree", repo=repo) != "true":
        raise UserError(f"{repo or paths.repository()} is not a git checkout, so there is no "
                        "base revision to compare with: pass --baseline-ref REF, or "
                        "--baseline FILE recorded on this machine")
    branch = default_branch(repo)
    if branch is None:
        raise UserError("no default branch found (no origin/HEAD, origin/main, main or "
                        "master): pass --baseline-ref REF")
    head = _git("rev-parse", "HEAD", repo=repo)
    base = _git("merge-base", "HEAD", branch, repo=repo)
    if base is None:
        raise UserError(f"this checkout shares no history with {branch} (a shallow clone? "
                        "fetch with depth 0): pass --baseline-ref REF")
    if base != head:
        return base, f"the merge-base with {branch}"
    parent = _git("rev-parse", "--verify", "--quiet", "HEAD^", repo=repo)
    if parent is None:
        raise UserError(f"HEAD is the first commit of {branch}: there is nothing before it to "
                        "compare with; pass --baseline-ref REF")
    return parent, f"HEAD^ (HEAD is on {branch})"


def export_revision(ref: str, repo: Path | None = None) -> Path:
    """The tree of ``ref`` in a temporary folder (git archive: the checkout is not touched)."""
    import subprocess
    import tempfile

    repo = repo or paths.repository()
    commit = resolve_ref(ref, repo)
    dest = Path(tempfile.mkdtemp(prefix="pollbench-baseline-"))
    with subprocess.Popen(["git", "archive", commit], cwd=repo,
                          stdout=subprocess.PIPE) as archive:  # its pipe closed at the end
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.returncode != 0:
        raise UserError(f"git archive {ref} failed")
    return dest


def run_interleaved(ref: str, repeat: int, port: int, backend_port: int,
                    injected: dict[str, float]) -> tuple[list[dict], list[dict]]:
    """Alternate the baseline revision and this checkout, so drift hits both sides alike."""
    import shutil
    import subprocess

    repo = paths.repository()
    commit = resolve_ref(ref)  # an unknown revision is named first
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True).stdout.splitlines()
    if dirty:
        raise UserError(f"the checkout {repo} has uncommitted changes ({len(dirty)} files): "
                        "commit or stash them, so that the comparison says what it measured")
    tree = export_revision(ref)
    if not (tree / "pollbench" / "__main__.py").is_file():
        shutil.rmtree(tree, ignore_errors=True)
        raise UserError(f"--baseline-ref {ref} has no pollbench (no pollbench/__main__.py in "
                        "that revision): choose a revision that has it")
    root = new_run_dir("check-interleaved")
    base: list[dict] = []
    cand: list[dict] = []
    sides = [("baseline", tree, {}, {"commit": commit, "branch": ref, "dirty": False}),
             ("candidate", repo, injected, None)]
    try:
        # both sides alike: each a `pollbench run` of its own tree, in its own process
        for i, (name, where, inject, git) in rounds(repeat, sides):
            out = root / name / f"rep-{i + 1}"
            out.parent.mkdir(exist_ok=True)
            log.info(f"== {name} ({ref if name == 'baseline' else 'this checkout'}) "
                     f"{i + 1} of {repeat}")
            run_side(where, out, port, backend_port, inject,
                     f"the baseline revision {ref}" if git else "this checkout")
            (base if git else cand).append(_summary(out))
            record_side_run(out, git)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return base, cand


def rounds(repeat: int, sides: list) -> Iterator[tuple[int, Any]]:
    """(round, side) for ``repeat`` rounds of both sides, the order turned every round (AB
    BA AB ...), so neither a drift within a round nor the place in it leans on one side."""
    for i in range(repeat):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            yield i, side


def run_side(tree: Path, out: Path, port: int, backend_port: int, injected: dict[str, float],
             what: str) -> None:
    """One repetition of the CI scenario: ``pollbench run`` of ``tree``, as its own process
    (the history is appended by the check, with the revision it ran)."""
    import os
    import subprocess

    extra = [arg for k, v in injected.items() if v
             for arg in (f"--{k.replace('_', '-')}", f"{v:g}")]
    env = dict(os.environ, PYTHONPATH=str(tree), POLLBENCH_HISTORY=HISTORY_OFF)
    proc = subprocess.run([sys.executable, "-m", "pollbench", "run",
                           *ci_run_arguments(port, backend_port), *extra, "--out", str(out)],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunFailed(f"{what} failed its run (exit {proc.returncode}): "
                        f"{proc.stderr.strip()[-300:]}")


def check(baseline: Path | None, repeat: int | None, thresholds: Path | None, fmt: str,
          output: Path | None, update: bool, force: bool, port: int, backend_port: int,
          delivery_delay_ms: float, baseline_ref: str | None = None, burn_us: float = 0.0
          ) -> int:
    """The gate.  Which baseline: ``--update-baseline`` records a file; ``--baseline FILE``
    compares with a recorded file (this machine's only); ``--baseline-ref REF`` reruns REF
    interleaved; with none of them, the default base revision (:func:`default_base`) is
    rerun interleaved."""
    from analysis.verdict import ThresholdsError, read_thresholds

    check_number("--delivery-delay-ms", delivery_delay_ms, 0, 60_000)
    check_number("--burn-us", burn_us, 0, 1_000_000)
    injected = {"delivery_delay_ms": delivery_delay_ms, "burn_us": burn_us}
    check_output_file(output, "--output")
    if force and not update:
        raise UserError("--force goes with --update-baseline")
    if baseline_ref is not None and update:
        raise UserError("--baseline-ref reruns a revision as the baseline; it does not "
                        "go with --update-baseline")
    if baseline_ref is not None and baseline is not None:
        raise UserError("--baseline FILE and --baseline-ref REF are two baselines: give one")
    try:
        limits = read_thresholds(thresholds)
    except ThresholdsError as e:
        raise UserError(str(e)) from None
    interleaved = update is False and baseline is None
    repeat = check_repeat(repeat, limits.alpha, paired=interleaved)
    config = ci_config(injected)
    resolved = preflight(StackSpec(profile=CI_PROFILE, port=port, backend_port=backend_port),
                         LoadSpec(**CI_LOAD), warn=False).resolved
    here = machine_fingerprint(software_versions(resolved.nginx_path))
    if update:
        baseline = baseline or default_baseline()
        if baseline.exists() and not force:
            raise UserError(f"{baseline} exists; pass --force to replace the baseline")
        started = time.time()
        summaries = run_repetitions(repeat, port, backend_port, injected, "baseline")
        baseline.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(baseline, {"schema_version": 1, "kind": "baseline",
                                     "created_at": started, "config": config,
                                     "machine": here, "runs": summaries})
        print(f"baseline written: {baseline} ({repeat} repetitions)")
        return EXIT_OK
    if baseline is None:
        why = "given"
        if baseline_ref is None:
            baseline_ref, why = default_base()
        log.info(f"baseline: revision {baseline_ref[:12]} ({why}), rerun here, interleaved "
                 f"with this checkout, {repeat} repetitions a side")
        base_runs, candidate = run_interleaved(baseline_ref, repeat, port, backend_port,
                                               injected)
        return _verdict(base_runs, candidate, limits, fmt, output,
                        f"revision {baseline_ref} ({repeat} interleaved repetitions)",
                        f"this checkout ({repeat} interleaved repetitions)", paired=True)
    if not baseline.is_file():
        raise UserError(f"no baseline at {baseline}: record one with pollbench check "
                        "--update-baseline")
    recorded = read_json(baseline, str(baseline))
    if not isinstance(recorded, dict) or recorded.get("schema_version") != 1 or \
            recorded.get("kind") != "baseline" or not isinstance(recorded.get("config"), dict):
        raise UserError(f"{baseline} is not a pollbench baseline (schema_version 1)")
    wanted = {k: v for k, v in config.items() if k not in INJECTED}
    had = {k: v for k, v in recorded.get("config", {}).items() if k not in INJECTED}
    if wanted != had:
        raise UserError(f"{baseline} was recorded with another CI scenario ({had}); record a "
                        "new one with pollbench check --update-baseline --force")
    check_same_machine(recorded.get("machine"), here, baseline)
    runs = baseline_runs(recorded, baseline)  # its summaries are usable, before any run
    if len(runs) < repeat:
        raise UserError(f"{baseline} holds {len(runs)} repetitions, fewer than the {repeat} a "
                        "side this verdict needs: record it again with --update-baseline "
                        "--force")
    candidate = run_repetitions(repeat, port, backend_port, injected, "check")
    return _verdict(recorded["runs"], candidate, limits, fmt, output, str(baseline),
                    f"this checkout ({repeat} repetitions)")


def check_repeat(repeat: int | None, alpha: float, paired: bool) -> int:
    """The repetitions a side: the default, or ``repeat`` when Holm's strictest level over
    the compared metrics can be reached with it (paired: Wilcoxon signed-rank over the
    interleaved rounds; else Mann-Whitney)."""
    from analysis.catalog import COMPARED
    from analysis.verdict import min_samples

    family = len(COMPARED)
    need = min_samples(alpha / family, paired)
    if repeat is None:
        return max(CI_REPEAT, need)
    if not need <= repeat <= 50:
        test = "Wilcoxon's signed-rank test over interleaved pairs" if paired else \
            "Mann-Whitney"
        raise UserError(f"--repeat must be from {need} to 50 (it is {repeat}): with {family} "
                        f"metrics tested at alpha {alpha:g} (Holm), {test} needs {need} "
                        f"repetitions a side to reach p < {alpha / family:.2g}")
    return repeat


def check_same_machine(recorded, here: dict, baseline: Path) -> None:
    """A committed baseline holds only on the machine that recorded it."""
    if isinstance(recorded, dict) and recorded.get("fingerprint") == here["fingerprint"]:
        return
    why = ("it records no machine fingerprint" if not isinstance(recorded, dict)
           else "differs in " + "; ".join(fingerprint_differences(recorded, here)[:3]))
    raise UserError(f"{baseline} was recorded on another machine ({why}): figures of two "
                    "machines do not compare. Use --baseline-ref REF (both sides measured "
                    "here, interleaved), or record a baseline on this machine with "
                    "--update-baseline --force")


def _verdict(base_runs: list[dict], candidate: list[dict], limits, fmt: str,
             output: Path | None, base_name: str, cand_name: str, paired: bool = False,
             scenario: str = CI_LOAD["scenario"]) -> int:
    from analysis.verdict import GATE_FAILED, REGRESSION, compare, exit_code
    from analysis.verdict_format import FORMATS

    verdicts = compare(base_runs, candidate, limits, paired=paired)
    text = FORMATS[fmt](verdicts, base_name, cand_name)
    if output:
        write_atomic(output, text)
        print(f"verdict written to {output}")
    sys.stdout.write(text if not output or fmt == "text" else "")
    flagged = [v.metric for v in verdicts if v.status in (REGRESSION, GATE_FAILED)]
    if flagged:
        # where the history saw these metrics step before (best effort: no history, no line)
        from pollbench.actions.history import last_steps

        for metric, line in last_steps(flagged, scenario).items():
            log.warning(f"history: last step of {metric}: {line}")
    return exit_code(verdicts)


def check_project(spec: StackSpec, load: LoadSpec, warmup_s: float, repeat: int | None,
                  thresholds: Path | None, fmt: str, output: Path | None,
                  baseline_ref: str | None) -> int:
    """The gate in the user's repository: their service (the project file's backend command)
    at ``baseline_ref`` (default: the merge-base with the default branch) and in the working
    tree, run in alternation with the project's load, each repetition ``load.duration_s``.
    pollbench itself is the same on both sides: only the service differs."""
    import shutil
    import subprocess

    from analysis.verdict import ThresholdsError, read_thresholds
    from pollbench.actions.run import run
    from pollbench.records.runinfo import git_info

    backend = spec.backend_command
    assert backend is not None
    check_output_file(output, "--output")
    try:
        limits = read_thresholds(thresholds)
    except ThresholdsError as e:
        raise UserError(str(e)) from None
    workdir = backend.workdir()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=workdir,
                         capture_output=True, text=True)
    if top.returncode != 0:
        raise UserError(f"your backends' folder {workdir} is not in a git checkout, so there "
                        "is no base revision to compare with: commit it to a git repository")
    repo = Path(top.stdout.strip()).resolve()
    rel = workdir.relative_to(repo)
    repeat = check_repeat(repeat, limits.alpha, paired=True)
    preflight(spec, load, warn=False)  # every refusal before the first run
    why = "given"
    if baseline_ref is None:
        baseline_ref, why = default_base(repo)
    commit = resolve_ref(baseline_ref, repo)
    here = git_info(repo)
    if here and here.get("dirty"):
        log.info(f"{repo} has uncommitted changes: the candidate is the working tree as it is")
    log.info(f"baseline: {repo.name} at {baseline_ref} ({commit[:12]}, {why}), rerun here, "
             f"interleaved with the working tree, {repeat} repetitions a side of "
             f"{load.duration_s:g} s")
    tree = export_revision(commit, repo)
    if not (tree / rel).is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        raise UserError(f"revision {baseline_ref} has no {rel} (your backends' folder): "
                        "choose a revision that has it")
    base_spec = replace(spec, backend_command=replace(backend, cwd=str(tree / rel)))
    sides = [("baseline", base_spec), ("candidate", spec)]
    root = new_run_dir("check-project")
    base: list[dict] = []
    cand: list[dict] = []
    try:
        for i, (name, side) in rounds(repeat, sides):
            out = root / name / f"rep-{i + 1}"
            out.parent.mkdir(exist_ok=True)
            log.info(f"== {name} ({baseline_ref if name == 'baseline' else 'working tree'})"
                     f" {i + 1} of {repeat}")
            code = run(side, load, out=out, report=False, history_source="check",
                       warmup_s=warmup_s)
            if code != EXIT_OK:
                raise RunFailed(f"the {name} run {out} ended with code {code}")
            summary = _summary(out, warmup_s)
            (base if name == "baseline" else cand).append(summary)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return _verdict(base, cand, limits, fmt, output,
                    f"{repo.name} at {baseline_ref} ({repeat} interleaved repetitions)",
                    f"the working tree ({repeat} interleaved repetitions)", paired=True,
                    scenario=load.scenario)
