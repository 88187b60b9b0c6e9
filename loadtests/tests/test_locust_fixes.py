"""Locust's own costs that pollbench's locustfile removes (checked in a child process:
``import locust`` monkey-patches the process that imports it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# The worker's handling of a spawn message (locust/runners.py, WorkerRunner.handle_message),
# three messages' worth: every option the master sends is tested against
# default_args_dict(), which built and parsed a whole parser each time (~75 per message,
# once a second per worker while users start).
SPAWN_MESSAGES = textwrap.dedent("""
    import json, sys
    import locust.argument_parser as argument_parser
    from locust.argument_parser import get_parser
    if sys.argv[1] == "pollbench":
        import loadtests.locustfile  # applies its fixes on import, as a run does
    sent = vars(get_parser().parse_args([]))  # the master's options
    built = []
    real = argument_parser.get_empty_argument_parser
    def counting(*a, **kw):
        built.append(1)
        return real(*a, **kw)
    argument_parser.get_empty_argument_parser = counting
    sent["pb_channels"] = 7  # an option of the locustfile's own
    for _message in range(3):
        custom = {k: v for k, v in sent.items()
                  if k not in argument_parser.default_args_dict()
                  or k in ["expect_workers", "tags", "exclude_tags"]}
    copy = argument_parser.default_args_dict()
    copy["num_users"] = "changed by a caller"
    print(json.dumps({"options": len(sent), "built": len(built), "custom": custom,
                      "copies": argument_parser.default_args_dict()["num_users"] != copy["num_users"]}))
""")


def spawn_messages(locustfile: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SPAWN_MESSAGES, locustfile],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_spawn_message_builds_locusts_option_parser_once_not_per_option():
    plain = spawn_messages("none")  # Locust as shipped: the cost this fix removes
    assert plain["options"] > 50 and plain["built"] >= 3 * plain["options"]
    got = spawn_messages("pollbench")
    assert got["built"] <= 1
    # the worker still takes the locustfile's options, and no option of Locust's own
    assert got["custom"]["pb_channels"] == 7
    assert {k for k in got["custom"] if not k.startswith("pb_")} == \
        {"expect_workers", "tags", "exclude_tags"}
    assert got["copies"]  # a caller changing its dict does not change the next one's
