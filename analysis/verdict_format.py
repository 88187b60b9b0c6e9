"""Verdicts as text, Markdown (a pull-request comment), JSON, JUnit XML and the CI trackers'
formats (:mod:`analysis.tracker_format`).  Each returns a str."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from analysis.tracker_format import TRACKER_FORMATS, figures_from_verdicts, format_figures
from analysis.verdict import (
    GATE_FAILED,
    IMPROVEMENT,
    INSUFFICIENT,
    NOT_MEASURED,
    REGRESSION,
    SHOWN,
    VOID,
    Verdict,
    exit_code,
)

HEADLINE = {0: "PASS: no regression", 1: "REGRESSION", 2: "BROKEN: void or undecidable"}
MARK = {REGRESSION: "REGRESSION", GATE_FAILED: "FAILED", VOID: "VOID", INSUFFICIENT: "UNDECIDED",
        IMPROVEMENT: "better", NOT_MEASURED: "-", "ok": "ok", SHOWN: "shown"}


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _change(v: Verdict) -> str:
    return "-" if v.change is None else f"{v.change:+.1%}"


def _p(v: Verdict) -> str:
    if v.p_value is None:
        return "-"
    if v.p_adjusted is None or v.family <= 1:
        return f"{v.p_value:.3g}"
    return f"{v.p_adjusted:.3g}"


def _detect(v: Verdict) -> str:
    """The smallest change the comparison could have caught (80 % power), or the threshold
    when that is larger: a change this size or more would not have passed unnoticed."""
    if v.detectable is None:
        return "-"
    if v.detectable == float("inf"):
        return "none"
    return f"{max(v.detectable, v.threshold or 0.0):.0%}"


def _family(verdicts: list[Verdict]) -> str:
    family = max((v.family for v in verdicts), default=1)
    test = "Wilcoxon signed-rank's over the interleaved pairs" if any(
        v.method == "interleaved pairs" for v in verdicts) else "Mann-Whitney's"
    return (f"p is {test}, Holm-adjusted over {family} metrics; 'caught' is the "
            "smallest change this comparison would catch with 80 % power (or the threshold, "
            "if larger): a smaller one can pass unnoticed")


def format_text(verdicts: list[Verdict], baseline: str, candidate: str) -> str:
    code = exit_code(verdicts)
    lines = [f"pollbench compare: {HEADLINE[code]} (exit {code})",
             f"baseline:  {baseline}", f"candidate: {candidate}", _family(verdicts), ""]
    w = max(len(v.metric) for v in verdicts)
    lines.append(f"{'metric':{w}}  {'verdict':10} {'baseline':>10} {'candidate':>10} "
                 f"{'change':>8} {'p':>7} {'caught':>6}  n       why")
    for v in verdicts:
        lines.append(f"{v.metric:{w}}  {MARK[v.status]:10} {_num(v.baseline):>10} "
                     f"{_num(v.candidate):>10} {_change(v):>8} {_p(v):>7} {_detect(v):>6}  "
                     f"{v.n_baseline}/{v.n_candidate:<4} {v.explanation} [{v.method}]")
    return "\n".join(lines) + "\n"


def format_markdown(verdicts: list[Verdict], baseline: str, candidate: str) -> str:
    code = exit_code(verdicts)
    icon = {0: ":white_check_mark:", 1: ":x:", 2: ":warning:"}[code]
    lines = [f"### {icon} pollbench: {HEADLINE[code]}", "",
             f"Baseline `{baseline}` vs candidate `{candidate}`. A metric regresses only when "
             "its change exceeds its threshold **and** a Mann-Whitney U test finds it "
             f"significant. {_family(verdicts)}.", "",
             "| metric | verdict | baseline | candidate | change | p | caught | why |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    quiet = ("ok", NOT_MEASURED, SHOWN)
    flagged = [v for v in verdicts if v.status not in quiet]
    rest = [v for v in verdicts if v.status in quiet]
    for v in flagged + rest:
        verdict = f"**{MARK[v.status]}**" if v in flagged else MARK[v.status]
        lines.append(f"| {v.metric} | {verdict} | {_num(v.baseline)} | {_num(v.candidate)} | "
                     f"{_change(v)} | {_p(v)} | {_detect(v)} | {v.explanation.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def format_json(verdicts: list[Verdict], baseline: str, candidate: str) -> str:
    code = exit_code(verdicts)
    return json.dumps({"schema_version": 1, "exit_code": code, "verdict": HEADLINE[code],
                       "baseline": baseline, "candidate": candidate,
                       "metrics": [v.as_dict() for v in verdicts]}, indent=2) + "\n"


def format_junit(verdicts: list[Verdict], baseline: str, candidate: str) -> str:
    failures = sum(v.status in (REGRESSION, GATE_FAILED) for v in verdicts)
    errors = sum(v.status in (VOID, INSUFFICIENT) for v in verdicts)
    skipped = sum(v.status == NOT_MEASURED for v in verdicts)
    suite = ET.Element("testsuite", name="pollbench.compare", tests=str(len(verdicts)),
                       failures=str(failures), errors=str(errors), skipped=str(skipped))
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="baseline", value=baseline)
    ET.SubElement(properties, "property", name="candidate", value=candidate)
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname="pollbench.compare", name=v.metric)
        message = (f"baseline {_num(v.baseline)}, candidate {_num(v.candidate)}, change "
                   f"{_change(v)}, p {_p(v)}, caught from {_detect(v)}: {v.explanation}")
        if v.status in (REGRESSION, GATE_FAILED):
            ET.SubElement(case, "failure", message=message, type=v.status).text = message
        elif v.status in (VOID, INSUFFICIENT):
            ET.SubElement(case, "error", message=message, type=v.status).text = message
        elif v.status == NOT_MEASURED:
            ET.SubElement(case, "skipped", message=message)
        else:
            ET.SubElement(case, "system-out").text = message
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


FORMATS = {"text": format_text, "markdown": format_markdown, "json": format_json,
           "junit": format_junit}


def _tracker(fmt: str):
    def render(verdicts: list[Verdict], baseline: str, candidate: str) -> str:
        return format_figures(figures_from_verdicts(verdicts), fmt)
    return render


FORMATS.update({fmt: _tracker(fmt) for fmt in TRACKER_FORMATS})
