"""pollbench's additions to Locust's web UI, through Locust's documented extension points
(``extended_tabs`` / ``extended_tables`` template arguments, an ``extended_stats`` entry
in ``/stats/requests``, Flask routes; see Locust's examples/extend_web_ui.py):

* a "Long polling" tab (:mod:`loadtests.live`), refreshed with the UI's own 2-s poll;
  Locust draws an extended tab as a table only, so a small script
  (``static/long-polling-chart.js``, added to Locust's page) draws delivery latency over
  time above that table from ``/pollbench/live.json``;
* the start form refuses what ``pollbench run`` refuses, with the same message
  (:func:`loadtests.options.check_load`);
* ``/pollbench/live.json``: the tab's figures as numbers (and 15 min of per-second points);
* ``/pollbench/reports``: the reports of this session's finished tests, linked from
  "Download Data" and from the tab.  Only files under ``<tests>/NNN/report/`` are served.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from loadtests.live import LiveView
from loadtests.options import check_load

TAB_KEY = "long-polling"
STATIC = Path(__file__).resolve().parent / "static"
CHART_SCRIPT = '<script src="/pollbench/static/long-polling-chart.js"></script>\n'

REPORTS_HREF = "/pollbench/reports"
TABLE = [{"key": "figure", "title": "Figure"},
         {"key": "now", "title": "Now (last 10 s)"},
         {"key": "test", "title": "This test"},
         {"key": "trend", "title": "Last 60 s (1 point/s)"}]
# the start form's custom parameters -> check_load's arguments
FORM_NUMBERS = {"pb_channels": ("channels", int), "pb_publish_rate": ("publish_rate", float),
                "pb_poll_timeout": ("poll_timeout_s", float),
                "pb_task_duration_ms": ("task_duration_ms", int),
                "pb_message_bytes": ("message_bytes", int),
                "pb_task_payload_bytes": ("task_payload_bytes", int)}


def form_problem(form, opts, available: list[str], max_poll_timeout_s: float) -> str | None:
    """What the harness would refuse in a start form (None: nothing), in its own words."""
    try:
        users = int(form.get("user_count", ""))
        spawn_rate = float(form.get("spawn_rate", ""))
    except ValueError:
        return None  # Locust's own check answers these
    values: dict = {}
    for field, (arg, kind) in FORM_NUMBERS.items():
        text = form.get(field, getattr(opts, field))
        try:
            values[arg] = kind(text)
        except (TypeError, ValueError):
            return f"--{field[3:].replace('_', '-')} must be a number (it is {text!r})"
    classes = form.getlist("user_classes") or available
    try:
        check_load(users=users, spawn_rate=spawn_rate, user_classes=classes,
                   max_poll_timeout_s=max_poll_timeout_s,
                   connection=form.get("pb_connection", opts.pb_connection),
                   retry_backoff=form.get("pb_retry_backoff", opts.pb_retry_backoff), **values)
    except ValueError as e:
        return str(e)
    return None


def install(environment, live: LiveView, tests_dir: Path | None) -> None:
    from flask import abort, jsonify, request, send_from_directory

    web_ui = environment.web_ui
    app = web_ui.app
    opts = environment.parsed_options
    web_ui.template_args.update(
        extended_tabs=[{"title": "Long polling", "key": TAB_KEY}],
        extended_tables=[{"key": TAB_KEY, "structure": TABLE}],
        extended_csv_files=[{"href": REPORTS_HREF,
                             "title": "Long-poll reports of this session's finished tests"}]
        if tests_dir is not None else [])

    @app.before_request
    def refuse_bad_start():
        if request.path != "/swarm" or request.method != "POST":
            return None
        available = sorted(environment.available_user_classes or {}) or \
            [c.__name__ for c in environment.user_classes]
        problem = form_problem(request.form, opts, available, opts.pb_max_poll_timeout)
        if problem is None:
            return None
        return jsonify({"success": False, "message": problem, "host": environment.host})

    @app.after_request
    def add_long_poll_figures(response):
        if request.path == "/" and response.status_code == 200 and \
                response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            response.set_data(page.replace("</body>", CHART_SCRIPT + "</body>", 1))
            return response
        if request.path != "/stats/requests" or response.status_code != 200:
            return response
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            body["extended_stats"] = [{"key": TAB_KEY, "data": live.rows(
                REPORTS_HREF if tests_dir is not None else None)}]
            response.set_data(json.dumps(body))
        return response

    @app.route("/pollbench/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(STATIC, name)

    @app.route("/pollbench/live.json")
    def live_json():
        return jsonify(live.snapshot())

    @app.route(REPORTS_HREF)
    def reports():
        items = []
        for test in sorted(tests_dir.iterdir()) if tests_dir and tests_dir.is_dir() else []:
            if not test.name.isdigit():
                continue
            try:
                info = json.loads((test / "test.json").read_text())
            except (OSError, ValueError):
                continue
            what = (f"test {test.name}: {info.get('users')} users, "
                    f"{', '.join(info.get('user_classes', []))}")
            if (test / "report" / "report.html").exists():
                items.append(f'<li><a href="{REPORTS_HREF}/{test.name}/report.html">'
                             f"{html.escape(what)}</a></li>")
            else:
                state = "running" if info.get("status") == "running" else "report being written"
                items.append(f"<li>{html.escape(what)} ({state})</li>")
        body = "".join(items) or "<li>no test has finished yet</li>"
        return (f"<!doctype html><title>pollbench reports</title><h1>Reports of this "
                f"session's tests</h1><ul>{body}</ul><p><a href='/'>back to the web UI</a></p>")

    @app.route(f"{REPORTS_HREF}/<test>/<path:name>")
    def report_file(test: str, name: str):
        if tests_dir is None or not test.isdigit():
            abort(404)
        # send_from_directory refuses paths that leave the folder (werkzeug safe_join)
        return send_from_directory(tests_dir / test / "report", name)
