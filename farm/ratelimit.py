"""Per-user request rate limit: a token bucket kept in Redis, updated atomically by a script.

Every answer can carry the bucket's state (``RateLimit-Limit`` / ``RateLimit-Remaining``), and a
refusal says when to come back (``Retry-After``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from farm.errors import RateLimited

# KEYS[1] bucket; ARGV: rate per second, burst, now (seconds).
# Returns {allowed, retry_after_ms, tokens left (floored)}.
_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait_ms, math.floor(tokens)}
"""


@dataclass(frozen=True)
class Quota:
    """What a client may still do right now."""

    limit: int  # the burst: requests allowed at once
    remaining: int
    per_second: float


class RateLimiter:
    def __init__(self, client: redis.Redis, rate_per_second: float, burst: int) -> None:
        self.script = client.register_script(_BUCKET)
        self.rate = rate_per_second
        self.burst = burst

    def check(self, owner: str) -> Quota:
        """Take one token for ``owner`` or raise ``RateLimited`` with the seconds to wait."""
        allowed, wait_ms, left = self.script(
            keys=[f"farm:ratelimit:{owner}"], args=[self.rate, self.burst, time.time()]
        )
        quota = Quota(limit=self.burst, remaining=max(0, int(left)), per_second=self.rate)
        if not int(allowed):
            retry_after = max(1, math.ceil(int(wait_ms) / 1000))
            raise RateLimited(f"rate limit exceeded; retry in {retry_after} s", retry_after)
        return quota
