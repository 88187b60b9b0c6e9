"""``pollbench check`` refusals: each must exit 2 with one clear line, before any run starts."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from pollbench.actions.check import ci_config
from pollbench.tests.conftest import REPO, free_stack_ports, pollbench_cmd


def check(*args):
    port, backend_port = free_stack_ports()
    t0 = time.monotonic()
    proc = subprocess.run(pollbench_cmd("check", "--port", str(port), "--backend-port",
                                        str(backend_port), *map(str, args)),
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert time.monotonic() - t0 < 20  # refused before any repetition ran
    return proc


def test_missing_baseline_says_how_to_record_one(tmp_path):
    proc = check("--baseline", tmp_path / "none.json")
    assert proc.returncode == 2 and "--update-baseline" in proc.stderr


def test_existing_baseline_is_not_overwritten_without_force(tmp_path):
    base = tmp_path / "ci.json"
    base.write_text("{}")
    proc = check("--baseline", base, "--update-baseline")
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert base.read_text() == "{}"


def test_negative_or_nan_injected_delay_is_refused(tmp_path):
    for bad in ("-5", "nan"):
        proc = check("--baseline", tmp_path / "none.json", "--delivery-delay-ms", bad)
        assert proc.returncode == 2
        assert "--delivery-delay-ms must be a finite number from 0 to 60000" in proc.stderr


def test_baseline_ref_with_update_baseline_is_refused(tmp_path):
    proc = check("--baseline", tmp_path / "new.json", "--update-baseline", "--baseline-ref", "HEAD")
    assert proc.returncode == 2 and "does not go with --update-baseline" in proc.stderr
    assert not (tmp_path / "new.json").exists()


def test_force_alone_is_refused(tmp_path):
    proc = check("--baseline", tmp_path / "x.json", "--force")
    assert proc.returncode == 2 and "goes with --update-baseline" in proc.stderr


def test_baseline_from_another_scenario_is_refused(tmp_path):
    other = ci_config()
    other["load"] = dict(other["load"], users=999)
    base = tmp_path / "ci.json"
    base.write_text(json.dumps({"schema_version": 1, "kind": "baseline", "config": other,
                                "runs": []}))
    proc = check("--baseline", base)
    assert proc.returncode == 2 and "another CI scenario" in proc.stderr


def test_unknown_baseline_ref_is_refused_before_running(tmp_path):
    proc = check("--baseline-ref", "no-such-ref-xyz")
    assert proc.returncode == 2 and "is not a commit" in proc.stderr


def test_baseline_revision_is_exported_without_touching_the_checkout():
    from pollbench.actions.check import export_revision

    tree = export_revision("HEAD")
    try:
        assert (tree / "pollbench" / "__main__.py").is_file() and (tree / "target_app").is_dir()
        assert not (tree / ".git").exists()
    finally:
        import shutil

        shutil.rmtree(tree)


def this_machine() -> dict:
    from pollbench.records.runinfo import machine_fingerprint, software_versions
    from pollbench.stack.spec import find_nginx

    return machine_fingerprint(software_versions(find_nginx("nginx")))


def baseline_with(tmp_path, machine) -> object:
    runs = [{"schema_version": 1, "metrics": {"delivery_latency_p50": {"value": 1.0}}}] * 4
    base = tmp_path / "ci.json"
    body = {"schema_version": 1, "kind": "baseline", "config": ci_config(), "runs": runs}
    if machine is not None:
        body["machine"] = machine
    base.write_text(json.dumps(body))
    return base


def test_a_baseline_from_another_machine_is_refused_naming_what_differs(tmp_path):
    other = dict(this_machine(), cpu_model="Another CPU @ 9.9GHz", fingerprint="0123456789abcdef")
    proc = check("--baseline", baseline_with(tmp_path, other))
    assert proc.returncode == 2, proc.stderr
    assert "was recorded on another machine" in proc.stderr and "Another CPU" in proc.stderr
    assert "--baseline-ref" in proc.stderr and "--update-baseline --force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_baseline_without_a_fingerprint_is_refused(tmp_path):
    proc = check("--baseline", baseline_with(tmp_path, None))
    assert proc.returncode == 2 and "records no machine fingerprint" in proc.stderr


def test_the_fingerprint_is_stable_and_names_the_machine_and_its_software():
    a, b = this_machine(), this_machine()
    assert a == b and len(a["fingerprint"]) == 16
    assert a["cpu_count"] and a["kernel"] and a["python"] and a["nginx"].startswith("nginx")


def test_the_yardstick_names_the_load_generator_nginx_and_the_load_it_ran():
    # cpu_relative_backends is judged only between runs that name one yardstick: the same
    # code, nginx build and settings, and load give one; a change to any of them another
    from pollbench.records.runinfo import yardstick

    software = {"nginx_V": "nginx version: nginx/1.22.1", "locust": "2.47.0",
                "python": "3.11.7"}
    nginx, load = {"worker_connections": 1024, "use": "epoll"}, ci_config()["load"]
    one = yardstick(software, nginx, load)
    assert one == yardstick(dict(software), dict(nginx), dict(load))
    assert len({one, yardstick(software, {**nginx, "worker_connections": 2048}, load),
                yardstick({**software, "locust": "2.48.0"}, nginx, load),
                yardstick(software, nginx, {**load, "users": 101})}) == 4


def test_fewer_repetitions_than_a_verdict_needs_are_refused(tmp_path):
    for n in ("3", "5"):
        proc = check("--baseline", tmp_path / "none.json", "--repeat", n)
        assert proc.returncode == 2, proc.stderr
        assert "--repeat must be from 6 to 50" in proc.stderr and "Holm" in proc.stderr


def test_a_baseline_file_with_fewer_repetitions_than_the_check_is_refused(tmp_path):
    proc = check("--baseline", baseline_with(tmp_path, this_machine()))  # 4 runs, 22 needed
    assert proc.returncode == 2, proc.stderr
    assert "holds 4 repetitions, fewer than the 22" in proc.stderr


def test_a_baseline_file_and_a_baseline_ref_together_are_refused(tmp_path):
    proc = check("--baseline", tmp_path / "b.json", "--baseline-ref", "HEAD")
    assert proc.returncode == 2 and "give one" in proc.stderr


def git(repo, *args) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


def test_the_default_base_is_the_merge_base_or_on_the_default_branch_the_commit_before(
        tmp_path, monkeypatch):
    import pytest

    from pollbench import paths
    from pollbench.actions.check import default_base
    from pollbench.errors import UserError

    monkeypatch.setattr(paths, "CHECKOUT", tmp_path)
    with pytest.raises(UserError, match="not a git checkout.*--baseline-ref"):
        default_base()
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "one")
    with pytest.raises(UserError, match="first commit of main"):
        default_base()
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "two")
    two = git(tmp_path, "rev-parse", "HEAD")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "three")
    assert default_base() == (two, "HEAD^ (HEAD is on main)")
    three = git(tmp_path, "rev-parse", "HEAD")
    git(tmp_path, "checkout", "-q", "-b", "feature")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "feature work")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "more feature work")
    git(tmp_path, "checkout", "-q", "main")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "main moved on")
    git(tmp_path, "checkout", "-q", "feature")
    assert default_base() == (three, "the merge-base with main")
    git(tmp_path, "branch", "-q", "-m", "main", "trunk")  # no main, master nor origin
    with pytest.raises(UserError, match="no default branch found"):
        default_base()


def test_a_revision_without_pollbench_is_refused(tmp_path):
    # a commit of the empty tree: an unreferenced object; no branch or file changes
    empty_tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    commit = subprocess.run(["git", "commit-tree", empty_tree, "-m", "no pollbench here"],
                            cwd=REPO, capture_output=True, text=True, check=True,
                            env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                                 "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                                 "PATH": "/usr/bin:/bin"}).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    proc = check("--baseline-ref", commit)
    assert proc.returncode == 2, proc.stderr
    if dirty:  # a developer's working tree is refused for that first
        assert "has uncommitted changes" in proc.stderr
    else:
        assert "has no pollbench" in proc.stderr


@pytest.mark.slow
@pytest.mark.serial
def test_an_interleaved_check_catches_an_injected_delay_pair_by_pair(tmp_path):
    """A real check, 10 rounds (the fewest the signed-rank test decides on with Holm over the
    15 compared metrics): this working tree, committed into a repository of its own, against
    its own HEAD, with a delay injected into every delivery of the candidate only.  With 10
    pairs the test decides only when every pair agrees, so the delay (8 ms) stands well
    above a baseline run's
    hiccup: a 3-ms delay once lost to a baseline run whose p95 jumped from 2.6 to 7.0 ms
    (one pair of nine reversed, p95 "ok"; fresh-clone CI run, 2026-11-30)."""
    import os
    import shutil

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    tree = tmp_path / "tree"
    for name in files:
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    git(tree, "init", "-q", "-b", "main")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "the working tree")
    port, backend_port = free_stack_ports()
    env = dict(os.environ, POLLBENCH_RESULTS=str(tmp_path / "results"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [*pollbench_cmd("check", "--baseline-ref", "HEAD", "--repeat", "10",
                        "--delivery-delay-ms", "8", "--format", "json", "--port", str(port),
                        "--backend-port", str(backend_port))],
        cwd=tree, env=env, capture_output=True, text=True, timeout=400)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    verdict = json.loads(proc.stdout[proc.stdout.index("{"):])
    metrics = {m["metric"]: m for m in verdict["metrics"]}
    p95 = metrics["delivery_latency_p95"]
    assert p95["status"] == "regression" and p95["method"] == "interleaved pairs"
    assert p95["p_adjusted"] < 0.05 and p95["family"] >= 9 and p95["detectable"] is not None
    assert metrics["lost_messages"]["status"] == "ok"
    runs = sorted((tmp_path / "results").glob("*-check-interleaved/*/rep-*"))
    assert len(runs) == 20 and elapsed < 300
    # both sides in turn go first (AB BA ...): no side always runs on the same place of a round
    root = runs[0].parents[1]

    def started(side: str, i: int) -> float:
        return json.loads((root / side / f"rep-{i}" / "run.json").read_text())["started_at"]
    assert [started("baseline", i) < started("candidate", i) for i in range(1, 11)] == \
        [i % 2 == 1 for i in range(1, 11)]
    # and the injected delay reached the candidate's runs only
    delays = {side: {json.loads((root / side / f"rep-{i}" / "run.json").read_text())
                     ["stack"].get("delivery_delay_ms") for i in range(1, 11)}
              for side in ("baseline", "candidate")}
    assert delays == {"baseline": {0.0}, "candidate": {8.0}}, delays
