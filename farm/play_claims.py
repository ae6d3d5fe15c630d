"""Which of a job's plan passes draws each animation: claims taken as the passes reach them.

A job whose queue has free render slots is planned by its plan step and, beside it, by helper
passes on the other slots (plan steps 1..n, ``workers/steps/helpers.py``), which the plan adds
as it starts drawing. Every pass runs the
whole ``construct()``; at each animation it asks here whether it may draw it. The first pass
to ask wins it; every other pass simulates it. The passes start at once, with no plan before
the first frame, and balance themselves: a pass that finishes an animation takes the next one
nobody has reached.

Claims are coordination, not a record: they live in Redis, and losing them costs only work
done twice. The plan step stays the authority. A helper puts what it drew in the owner's
animation cache and says so here (``drew``); the plan waits for the helpers whose claims it
lost, looks their movies up like any cached animation, and cuts what is still missing into
chunks (a helper that died, or was refused its movies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

# A claim outlives any pass that could use it (plan steps have their own wall clock).
TTL_SECONDS = 3600

# KEYS[1] the job's claims, KEYS[2] what its passes said; ARGV: play index, the asking pass,
# TTL. Returns the pass that holds the claim (the asker if the play was free) and whether the
# plan's own pass has ended: one round trip, atomic.
_CLAIM = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if not holder then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  holder = ARGV[2]
end
return {holder, redis.call('HEXISTS', KEYS[2], 'plan-ended')}
"""


def _claims(job_id: str) -> str:
    return f"farm:plays:{job_id}:claims"


def _results(job_id: str) -> str:
    return f"farm:plays:{job_id}:drew"


@dataclass
class Helpers:
    """What the passes of a job said so far: the hash of each play a helper drew and stored,
    which helpers have ended (stored all they will), and whether the plan's pass has ended."""

    drew: dict[int, str] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    plan_ended: bool = False
    plan_drawing: float | None = None  # since when the plan draws (the Redis server's clock)
    plan_where: str = ""  # the plan's host and CPUs


class PlayClaims:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self._claim = client.register_script(_CLAIM)

    def claim(self, play: int, passer: int) -> tuple[int, bool]:
        """Claim ``play`` for pass ``passer`` (0: the plan step); returns the pass holding it,
        and whether the plan's own pass has ended. A pass asking again for a play it holds
        keeps it (a plan that runs a second pass, or an attempt after its worker died: it
        draws what it claimed before)."""
        keys = [_claims(self.job_id), _results(self.job_id)]
        holder, ended = self._claim(keys=keys, args=[play, passer, TTL_SECONDS])
        return int(holder), bool(ended)

    def plan_drawing(self, where: str) -> None:
        """The plan's pass drew its first animation, on ``where`` (its host and CPUs): the
        time, by the Redis server's clock, that helpers sharing those CPUs count from."""
        key = _results(self.job_id)
        drawing = self.now()
        with self.client.pipeline() as pipe:
            pipe.hsetnx(key, "plan-drawing", f"{drawing:.6f}")
            pipe.hset(key, "plan-where", where)
            pipe.expire(key, TTL_SECONDS)
            pipe.execute()

    def plan_starts(self, where: str) -> None:
        """The plan's pass starts on ``where`` (its host and CPUs), before it draws: helpers
        on other CPUs may start their own at once."""
        self._said("plan-where", where)

    def now(self) -> float:
        """The Redis server's clock (the one ``plan_drawing`` is read against)."""
        seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def plan_ended(self) -> None:
        """The plan's own pass has ended: a helper that has drawn nothing stops."""
        self._said("plan-ended", "1")

    def drew(self, play: int, play_hash: str) -> None:
        """A helper stored its movie of ``play`` in the owner's cache under this hash."""
        self._said(str(play), play_hash)

    def ended(self, passer: int) -> None:
        """Helper ``passer`` stored everything it will."""
        self._said(f"end:{passer}", "1")

    def _said(self, name: str, value: str) -> None:
        key = _results(self.job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, name, value)
            pipe.expire(key, TTL_SECONDS)
            pipe.execute()

    def helpers(self) -> Helpers:
        said = Helpers()
        stored: dict[bytes, bytes] = self.client.hgetall(_results(self.job_id))  # type: ignore[assignment]
        for name, value in stored.items():
            text = name.decode()
            if text == "plan-ended":
                said.plan_ended = True
            elif text == "plan-drawing":
                said.plan_drawing = float(value)
            elif text == "plan-where":
                said.plan_where = value.decode()
            elif text.startswith("end:"):
                said.ended.add(int(text[4:]))
            else:
                said.drew[int(text)] = value.decode()
        return said
