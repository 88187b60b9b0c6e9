"""``pollbench check`` refusals: each must exit 2 with one clear line, before any run starts."""

from __future__ import annotations

import json
import subprocess
import time

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


def test_committed_baseline_matches_the_ci_scenario():
    recorded = json.loads((REPO / "results" / "baselines" / "ci.json").read_text())
    assert recorded["kind"] == "baseline" and len(recorded["runs"]) >= 4
    assert {k: v for k, v in recorded["config"].items() if k != "delivery_delay_ms"} == \
        {k: v for k, v in ci_config().items() if k != "delivery_delay_ms"}
    assert not any(r["loadgen_saturated"] for r in recorded["runs"])


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
