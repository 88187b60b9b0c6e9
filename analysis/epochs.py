"""Messages lost when a channel's state was lost (a backend restart), counted exactly.

Standard library only: the load generator (loadtests.metrics, for its live count) and
the analysis (analysis.faults, for the report) count with this one function.
Events come from metrics/events.jsonl: ``epoch_change`` (a subscriber: channel, old
epoch, its cursor there, new epoch) and ``publisher_epoch_end`` (the publisher: channel,
the epoch that ended, its last seq, the epoch that followed).
"""

from __future__ import annotations


def epoch_loss(events: list[dict]) -> tuple[int, int]:
    """(messages lost to epoch changes, epoch changes whose loss is unknown).

    A subscriber that goes from epoch A to epoch C lost what was published in A after its
    cursor, and all of every epoch B between them that it never saw (the channel lived on
    another backend while its own was down): the publisher reports each ended epoch's last
    seq and the epoch that followed.  Unknown when that chain is not known (no publish
    after the subscriber's cursor, so likely nothing lost, or a publisher that could not
    tell): warned about, never counted as 0 silently."""
    last: dict[tuple[str, str], int] = {}
    following: dict[tuple[str, str], str] = {}
    for e in events:
        if e.get("kind") == "publisher_epoch_end":
            key = (e["channel"], e["epoch"])
            last[key] = max(last.get(key, 0), int(e["last_seq"]))
            if e.get("next_epoch"):
                following.setdefault(key, e["next_epoch"])
    lost = unknown = 0
    for e in events:
        if e.get("kind") != "epoch_change" or not e.get("old_epoch"):
            continue
        n = _lost_between(e["channel"], e["old_epoch"], int(e["cursor"]), e.get("new_epoch"),
                          last, following)
        if n is None:
            unknown += 1
        else:
            lost += n
    return lost, unknown


def _lost_between(channel: str, old: str, cursor: int, new: str | None,
                  last: dict[tuple[str, str], int],
                  following: dict[tuple[str, str], str]) -> int | None:
    if (channel, old) not in last:
        return None
    lost = max(last[(channel, old)] - cursor, 0)
    epoch = following.get((channel, old))
    for _ in range(1000):  # epochs skipped on the way to the new one: lost whole
        if epoch is None or new is None or epoch == new:
            return lost
        lost += last.get((channel, epoch), 0)
        epoch = following.get((channel, epoch))
    return lost
