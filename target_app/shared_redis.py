"""The Redis side of shared state: the Lua scripts (each one atomic step) and :class:`Link`,
one backend process's connection pool, its error accounting and its key names."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from target_app.store import Unavailable

# Redis connections one backend process may hold: its command pool and its fan-out
# subscription (the stack's capacity check counts them against Redis' maxclients)
REDIS_POOL_SIZE = 64
REDIS_CONNECTIONS_PER_BACKEND = REDIS_POOL_SIZE + 1
# How long a Redis command may take before the request is answered 503.
COMMAND_TIMEOUT_S = 2.0

# KEYS: epoch, seq, log, channels.  ARGV: candidate epoch, name, ts text, data, buffer length,
# max channels, fan-out channel.  Returns {seq, epoch}; seq 0 = the channel limit was reached.
PUBLISH = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[1]); epoch = ARGV[1] end
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[6]) then return {0, epoch} end
  redis.call('SADD', KEYS[4], ARGV[2])
end
local seq = redis.call('INCR', KEYS[2])
local msg = '{"seq":' .. seq .. ',"ts":' .. ARGV[3] .. ',"data":' .. ARGV[4] .. '}'
redis.call('RPUSH', KEYS[3], msg)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[7], 'C\\n' .. ARGV[2] .. '\\n' .. epoch .. '\\n' .. seq .. '\\n' .. msg)
return {seq, epoch}
"""

# KEYS: epoch, seq, log.  ARGV: candidate epoch, cursor (-1: none wanted), limit.
# Returns {epoch, last seq, first buffered seq, messages after the cursor (at most limit)}.
READ = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then redis.call('SET', KEYS[1], ARGV[1]); epoch = ARGV[1] end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor = tonumber(ARGV[2])
if cursor < 0 or cursor >= last then return {epoch, last, last + 1, {}} end
local n = redis.call('LLEN', KEYS[3])
local first = last - n + 1
local start = math.max(cursor + 1, first)
local count = math.min(last - start + 1, tonumber(ARGV[3]))
return {epoch, last, first, redis.call('LRANGE', KEYS[3], start - first, start - first + count - 1)}
"""

# KEYS: task.  ARGV: owner, submitted_at, duration_ms, payload_bytes, ttl ms.  1 = created.
TASK_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 's', 'r', 'o', ARGV[1], 'sub', ARGV[2], 'dur', ARGV[3], 'pay', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: task.  ARGV: finished_at, ttl ms, fan-out channel, id.
TASK_FINISH = """
if redis.call('HGET', KEYS[1], 's') ~= 'r' then return 0 end
redis.call('HSET', KEYS[1], 's', 'd', 'fin', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'T\\n' .. ARGV[4])
return 1
"""

# KEYS: task.  ARGV: heartbeat key prefix, fan-out channel, id.  The task's fields; a running
# task whose owner's heartbeat is gone is marked lost ('l') first, and its waiters told.
TASK_GET = """
local t = redis.call('HGETALL', KEYS[1])
if #t == 0 then return t end
local h = {}
for i = 1, #t, 2 do h[t[i]] = t[i + 1] end
if h['s'] == 'r' and redis.call('EXISTS', ARGV[1] .. h['o']) == 0 then
  redis.call('HSET', KEYS[1], 's', 'l')
  redis.call('PUBLISH', ARGV[2], 'T\\n' .. ARGV[3])
  t = redis.call('HGETALL', KEYS[1])
end
return t
"""


@dataclass
class Counters:
    redis_reads: int = 0
    redis_publishes: int = 0
    fanout_messages: int = 0
    polls_answered_from_view: int = 0
    fanout_reconnects: int = 0
    redis_errors: int = 0


class Link:
    """One backend process's connection to Redis: the pool, the key names, the errors."""

    def __init__(self, url: str, prefix: str, backend_index: int):
        self.url = url
        parts = urlsplit(url)  # named in errors and /stats without a password
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
        self.prefix = prefix
        # this process, as a task's owner and in its heartbeat key
        self.instance = f"{backend_index}-{os.getpid()}-{secrets.token_hex(3)}"
        self.fanout = f"{prefix}fanout"
        self.heartbeat_prefix = f"{prefix}hb:"
        self.epoch_key = f"{prefix}epoch"
        self.channels_key = f"{prefix}channels"
        # One retry on a broken connection: after Redis restarts, each pooled connection
        # fails once ("closed by server") before it is made again.  No retry on a timeout:
        # a stalled Redis answers 503 after COMMAND_TIMEOUT_S, not twice that.
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=REDIS_POOL_SIZE)
        self.counters = Counters()
        self.last_error = ""

    def note_error(self, e: BaseException) -> None:
        self.counters.redis_errors += 1
        self.last_error = f"{type(e).__name__}: {e}"

    def unavailable(self, e: BaseException) -> Unavailable:
        self.note_error(e)
        return Unavailable(f"shared state unavailable (redis at {self.where}: "
                           f"{type(e).__name__}: {e})")
