"""Benchmark: which Redis structure holds a channel's buffer?  A list trimmed to the buffer
length (RPUSH + LTRIM, index arithmetic on read) against a stream with seq-numbered ids
(XADD MAXLEN, XRANGE from the cursor), each inside the one Lua script a publish or a read is.

    python benchmarks/redis_structures.py [--rounds 3] [--messages 20000]

Starts its own redis-server on a free loopback port (persistence off), and for each round and
structure (alternating) publishes ``--messages`` 100-byte messages over 10 channels through
the publish script, then reads one message behind the head as many times (the common poll:
a subscriber one message behind), pipelined.  Prints Redis' own cost per script call
(``INFO commandstats``: usec_per_call of EVALSHA, so the client's speed does not count) for
publishes alone and for the publish + read mix, and the memory used.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pollbench.stack.net import find_free_ports  # noqa: E402
from target_app.shared_redis import PUBLISH as _PUBLISH  # noqa: E402  (the list scripts)
from target_app.shared_redis import READ as _READ  # noqa: E402

# The same scripts with the buffer kept in a stream: seq-numbered ids, MAXLEN on append, and
# XRANGE from the cursor (everything else, epoch and channel limit included, unchanged).
PUBLISH_STREAM = _PUBLISH.replace(
    "redis.call('RPUSH', KEYS[3], msg)\nredis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)",
    "redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[5], seq .. '-1', 'm', msg)")
READ_STREAM = _READ[:_READ.index("local n = redis.call('LLEN'")] + """\
local e = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
local first = tonumber(string.match(e[1][1], '^(%d+)'))
local got = redis.call('XRANGE', KEYS[3], '(' .. cursor .. '-1', '+', 'COUNT', ARGV[3])
local msgs = {}
for i, ent in ipairs(got) do msgs[i] = ent[2][2] end
return {epoch, last, first, msgs}
"""
assert PUBLISH_STREAM != _PUBLISH and "XRANGE" in READ_STREAM
STRUCTURES = {"list": (_PUBLISH, _READ), "stream": (PUBLISH_STREAM, READ_STREAM)}


def keys(ch: str) -> list[str]:
    return ["b:epoch", f"b:c:{ch}:seq", f"b:c:{ch}:log", "b:channels"]


def one(r: redis.Redis, structure: str, messages: int) -> dict:
    publish_text, read_text = STRUCTURES[structure]
    data = b'{"pad":"' + b"x" * 89 + b'"}'
    r.flushall()
    r.config_resetstat()
    publish, read = r.register_script(publish_text), r.register_script(read_text)
    pipe = r.pipeline(transaction=False)
    for i in range(messages):
        ch = f"ch{i % 10}"
        publish(keys=keys(ch), args=["ep", ch, b"%.6f" % time.time(), data, 1000, 10000,
                                     "b:fanout"], client=pipe)
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    pub_us = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    memory = r.info("memory")["used_memory"]
    last = messages // 10
    r.config_resetstat()
    for i in range(messages):
        read(keys=keys(f"ch{i % 10}")[:3], args=["ep", last - 1, 1000], client=pipe)
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    read_us = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    return {"publish_us": pub_us, "read_us": read_us, "memory_bytes": memory}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    port = find_free_ports(1)
    folder = tempfile.mkdtemp(prefix="pollbench-redis-structures-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", folder],
                              stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        results: dict[str, list[dict]] = {s: [] for s in STRUCTURES}
        for k in range(args.rounds):
            for structure in (STRUCTURES if k % 2 == 0 else reversed(list(STRUCTURES))):
                res = one(r, structure, args.messages)
                results[structure].append(res)
                print(f"round {k + 1} {structure:6}  publish {res['publish_us']:6.2f} us  "
                      f"read {res['read_us']:6.2f} us  memory {res['memory_bytes'] / 2**20:.2f} "
                      "MiB", flush=True)
        for structure, rs in results.items():
            pubs = sorted(x["publish_us"] for x in rs)
            reads = sorted(x["read_us"] for x in rs)
            print(f"{structure:6} median publish {pubs[len(pubs) // 2]:.2f} us "
                  f"({pubs[0]:.2f}-{pubs[-1]:.2f}), read {reads[len(reads) // 2]:.2f} us "
                  f"({reads[0]:.2f}-{reads[-1]:.2f}) per script call, Redis-side")
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
