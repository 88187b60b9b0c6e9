"""The load shapes of :data:`loadtests.options.STAGES` as a Locust shape class.  pollbench
adds this file to ``-f`` only when a shape other than constant is asked for (Locust uses any
shape class it finds).
"""

from __future__ import annotations

from locust import LoadTestShape, events

from loadtests.options import STAGES


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
