"""Load shapes as data: each is a list of stages (end of stage as a fraction of the run,
users as a fraction of ``--pb-shape-users``).  pollbench adds this file to ``-f``
only when a shape other than constant is asked for (Locust uses any shape class it finds).
"""

from __future__ import annotations

from locust import LoadTestShape, events

STAGES: dict[str, list[tuple[float, float]]] = {
    "constant": [(1.0, 1.0)],
    # ten equal steps up over 90 % of the run, then hold
    "ramp": [(0.09 * i, 0.1 * i) for i in range(1, 11)] + [(1.0, 1.0)],
    "steps": [(0.25, 0.25), (0.5, 0.5), (0.75, 0.75), (1.0, 1.0)],
    # a third of the users, then everyone for a fifth of the run, then back
    "spike": [(0.4, 0.33), (0.6, 1.0), (1.0, 0.33)],
    # half the users while warming up, then everyone for a long hold
    "soak": [(0.05, 0.5), (1.0, 1.0)],
}


@events.init_command_line_parser.add_listener
def add_shape_options(parser) -> None:
    parser.add_argument("--pb-shape", default="constant", choices=sorted(STAGES),
                        include_in_web_ui=False)
    parser.add_argument("--pb-shape-users", type=int, default=100, include_in_web_ui=False)
    parser.add_argument("--pb-shape-seconds", type=float, default=60.0, include_in_web_ui=False)
    parser.add_argument("--pb-shape-spawn-rate", type=float, default=20.0,
                        include_in_web_ui=False)


def users_at(stages: list[tuple[float, float]], fraction: float, users: int) -> int | None:
    for end, share in stages:
        if fraction < end:
            return max(1, round(share * users))
    return None


class StagedShape(LoadTestShape):
    """Follows STAGES[--pb-shape] over --pb-shape-seconds, then stops the test."""

    def tick(self):
        opts = self.runner.environment.parsed_options
        fraction = self.get_run_time() / opts.pb_shape_seconds
        users = users_at(STAGES[opts.pb_shape], fraction, opts.pb_shape_users)
        if users is None:
            return None
        return users, opts.pb_shape_spawn_rate
