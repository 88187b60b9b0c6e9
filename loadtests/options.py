"""Option parsing shared by the locustfile and the orchestrator (no locust import here)."""

from __future__ import annotations


def parse_connection_mode(text: str) -> int:
    """keepalive -> 0 (never close), close -> 1 (close after every request), every:K -> K."""
    if text == "keepalive":
        return 0
    if text == "close":
        return 1
    if text.startswith("every:") and text[6:].isdigit() and int(text[6:]) >= 1:
        return int(text[6:])
    raise ValueError(f"connection mode must be keepalive, close or every:K (K >= 1), not {text!r}")


MIX_ALIASES = {"subscriber": "ChannelSubscriber", "tasks": "TaskPoller", "poller": "TaskPoller"}
MIXABLE = ("ChannelSubscriber", "TaskPoller")


def parse_mix(text: str) -> dict[str, int]:
    """'subscriber:9,tasks:1' (or the class names) -> {'ChannelSubscriber': 9, 'TaskPoller': 1}.

    The one parser of ``--mix`` (pollbench) and ``--pb-mix`` (the locustfile); ValueError
    says what is wrong.  An empty text is no mix."""
    weights: dict[str, int] = {}
    if not text.strip():
        return weights
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        cls = MIX_ALIASES.get(name, name)
        if cls not in MIXABLE or not weight.isdigit() or int(weight) < 1:
            raise ValueError(f"{text!r}: use NAME:WEIGHT pairs with NAME subscriber or tasks "
                             "and WEIGHT a whole number >= 1, e.g. subscriber:9,tasks:1")
        weights[cls] = int(weight)
    return weights
