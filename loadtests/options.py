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


def parse_weights(text: str) -> dict[str, int]:
    """'ChannelSubscriber:9,TaskPoller:1' -> {'ChannelSubscriber': 9, 'TaskPoller': 1}."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, weight = part.partition(":")
        out[name] = int(weight)
    return out
