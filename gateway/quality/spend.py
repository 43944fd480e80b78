"""The monitor's daily budget: what its own calls cost today (UTC), against ``quality.daily_budget_usd``.

A sample (or semantic check) starts only while the day's spend plus what the samples in flight have reserved is
under the budget; it then **reserves** its worst-case cost, each of its calls first grows the reservation to that
call's bound when it is short (unconditionally: the sample was admitted), and **settles** the call's actual cost
into the day's spend; the rest of the reservation is released when the sample ends. Since every admission sees
every earlier sample's reservation, the day ends at most one sample's cost over the cap (the last one admitted),
plus whatever the samples in flight were billed beyond their reservations (docs/quality.md, "Money"). A sample
refused while the spend itself is under the budget (the rest is held by samples in flight) may wait for them to
settle (:meth:`gateway.quality.monitor.QualityMonitor`'s workers do); once the spend reaches the budget, sampling
stops until the next UTC day.

Two stores:

* :class:`DailySpend`, in this process: exact for one process. Other processes' spend reaches it only through
  the ledger (:meth:`DailySpend.sync`, which the monitor calls before a sample when its figure is older than
  ``quality.budget_sync_seconds``).
* :class:`RedisDailySpend`, one counter per UTC day in Redis (``auth.redis_url``, else ``cache.redis_url``):
  every reservation and settlement is one Lua script, atomic across every process and replica. Its
  :meth:`~RedisDailySpend.blocked` reads a local copy of the last figures Redis returned, so the request path
  never waits on Redis; a Redis that fails blocks sampling for :data:`RECHECK_S` (logged once per outage) and
  never touches a client's request.

Money is counted in integer units of 1e-12 USD (the ledger's and the price's resolution), so the Redis counter
and the ledger's sum of the same calls are equal to the last digit.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import func, select

from gateway.accounting.schema import ledger

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gateway.config import Settings

log = logging.getLogger("gateway.quality")

#: Money resolution, USD (the ledger's).
_Q = Decimal(1).scaleb(-12)
#: After Redis failed, how long this process samples nothing before asking it again.
RECHECK_S = 5.0
#: How long a day's counter and reservations outlive their last write: yesterday's figures expire a day later.
DAY_TTL_S = 2 * 86400

Blocked = Literal["budget", "unavailable"]


def utc_day(ts: float) -> str:
    """``YYYY-MM-DD`` of epoch seconds ``ts`` in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def to_pico(usd: Decimal) -> int:
    """``usd`` in 1e-12 USD units (rounded up)."""
    return int(usd.scaleb(12).to_integral_value(rounding=ROUND_CEILING))


def from_pico(units: int) -> Decimal:
    """1e-12 USD units as USD."""
    return Decimal(units).scaleb(-12).quantize(_Q)


async def monitoring_spend_today(engine: AsyncEngine, now: float | None = None) -> tuple[str, Decimal]:
    """The UTC day and the ledger's sum of its monitoring rows (``policy = 'monitor'``), every process's."""
    now = time.time() if now is None else now
    day_start_ms = int(now // 86400 * 86400 * 1000)  # the UTC day's first millisecond
    async with engine.connect() as conn:
        # By ts_ms, which is indexed (the day column's index went in revision 0004): a filter on ``day`` read the
        # whole ledger.
        found = await conn.scalar(
            select(func.sum(ledger.c.cost_usd)).where(ledger.c.ts_ms >= day_start_ms, ledger.c.policy == "monitor")
        )
    return utc_day(now), Decimal(found or 0).quantize(_Q)


@dataclass(slots=True)
class Reservation:
    """What one sample holds of the day's budget: ``held`` units not yet spent or released."""

    day: str
    name: str
    held: int
    seq: int = 0

    @property
    def member(self) -> str:
        """Its name in Redis (the amount last, for the scripts to read)."""
        return f"{self.name}:{self.seq}:{self.held}"


class DailySpend:
    """Monitoring spend of the current UTC day in this process; a new day starts from zero.

    ``spent_usd`` is what this process knows was spent today: its own calls, raised to the ledger's figure (all
    processes' rows) whenever :meth:`load` or :meth:`sync` reads it.
    """

    #: Whether the figures are shared by every process (Redis).
    shared = False

    def __init__(self, budget_usd: Decimal, clock: Callable[[], float] = time.time) -> None:
        self.budget_usd = budget_usd
        self._clock = clock
        self.day = utc_day(clock())
        self._spent = Decimal(0)
        self._held: dict[str, int] = {}  # this process's reservations in flight

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:
            self.day, self._spent = today, Decimal(0)

    @property
    def spent_usd(self) -> Decimal:
        """Spent so far today."""
        self._roll()
        return self._spent

    @property
    def reserved_usd(self) -> Decimal:
        """Held by the samples in flight."""
        return from_pico(sum(self._held.values()))

    def add(self, usd: Decimal) -> None:
        """Count ``usd`` spent now."""
        self._roll()
        self._spent += usd

    def load(self, day: str, usd: Decimal) -> None:
        """Start from what the ledger says was spent on ``day`` (another process, or before a restart)."""
        self._roll()
        if day == self.day:
            self._spent = max(self._spent, usd)

    def exhausted(self) -> bool:
        """Whether today's budget is spent (sampling stops until the next day)."""
        return self.spent_usd >= self.budget_usd

    def blocked(self) -> Blocked | None:
        """Why no sample may be taken now, as far as this process knows without asking anyone (the request path)."""
        return "budget" if self.exhausted() else None

    async def reserve(self, name: str, usd: Decimal, *, check: bool = True) -> Reservation | None:
        """Hold ``usd`` for a sample; None (nothing held) when ``check`` and the day's spend plus what the samples
        in flight hold is not under the budget."""
        if check and self.spent_usd + self.reserved_usd >= self.budget_usd:
            return None
        reservation = Reservation(self.day, f"{name[:64]}:{secrets.token_hex(4)}", to_pico(usd))
        self._held[reservation.name] = reservation.held
        return reservation

    async def grow(self, reservation: Reservation, usd: Decimal) -> None:
        """Hold ``usd`` more for ``reservation`` (a call's bound above what it held), whatever is left."""
        reservation.held += to_pico(usd)
        reservation.seq += 1
        self._held[reservation.name] = reservation.held

    async def settle(self, reservation: Reservation, bound: Decimal, actual: Decimal) -> None:
        """One call of ``reservation`` is over: its ``bound`` leaves the reservation, its ``actual`` cost is spent."""
        reservation.held = max(0, reservation.held - to_pico(bound))
        reservation.seq += 1
        if reservation.name in self._held:
            self._held[reservation.name] = reservation.held
        self.add(actual)

    async def release(self, reservation: Reservation) -> None:
        """The sample is over: what it still holds goes back to the budget."""
        self._held.pop(reservation.name, None)
        reservation.held = 0

    async def sync(self, day: str, ledger_usd: Decimal) -> None:
        """The ledger's figure for ``day`` (every process's monitoring rows): spent is at least that."""
        self.load(day, ledger_usd)

    async def counted(self) -> tuple[Decimal, Decimal] | None:
        """What the cap is checked against now: (spent, reserved); None when the store does not answer."""
        return self.spent_usd, self.reserved_usd

    async def aclose(self) -> None:
        """Close the store's connections."""


# Scripts: KEYS[1] the day's spend (integer 1e-12 USD), KEYS[2] its reservations (a sorted set of
# ``name:seq:amount`` scored by expiry, ms). Each returns {spent, reserved} (strings) after its work.
_HELD = """
local function held()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local sum = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    sum = sum + tonumber(string.match(m, ':(%d+)$'))
  end
  return sum, now
end
local function seeded(seed, ttl)
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], seed) end
  redis.call('EXPIRE', KEYS[1], ttl)
end
local function amount(member) return tonumber(string.match(member, ':(%d+)$')) end
"""

#: ARGV: budget, old member ('' for a new reservation), new member, check ('1': refuse once the budget is used up),
#: hold ms, seed (this process's figure of the day's spend, for a counter Redis lost), ttl s. Returns {ok, ...}.
_RESERVE = (
    _HELD
    + """
seeded(ARGV[6], ARGV[7])
local reserved, now = held()
local spent = redis.call('GET', KEYS[1])
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then return {1, spent, string.format('%.0f', reserved)} end
if ARGV[4] == '1' and tonumber(spent) + reserved >= tonumber(ARGV[1]) then
  return {0, spent, string.format('%.0f', reserved)}
end
if ARGV[2] ~= '' and redis.call('ZREM', KEYS[2], ARGV[2]) == 1 then reserved = reserved - amount(ARGV[2]) end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {1, spent, string.format('%.0f', reserved + amount(ARGV[3]))}
"""
)

#: ARGV: old member, new member, actual cost, hold ms, seed, ttl s. A second run (redis-py's retry after a lost
#: reply) finds the new member and counts nothing again.
_SETTLE = (
    _HELD
    + """
seeded(ARGV[5], ARGV[6])
local reserved, now = held()
if not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
    reserved = reserved - amount(ARGV[1]) + amount(ARGV[2])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[6])
  end
  redis.call('INCRBY', KEYS[1], ARGV[3])
end
return {redis.call('GET', KEYS[1]), string.format('%.0f', reserved)}
"""
)

#: ARGV: member.
_RELEASE = (
    _HELD
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local reserved = held()
return {redis.call('GET', KEYS[1]) or '0', string.format('%.0f', reserved)}
"""
)

#: ARGV: the ledger's figure ('' to only read), ttl s. The counter is raised to the ledger's figure (a settlement
#: lost while Redis was unreachable, or a counter Redis lost), never lowered (the ledger lags the counter by the rows
#: still queued in each process).
_SYNC = (
    _HELD
    + """
local spent = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and (not spent or tonumber(spent) < tonumber(ARGV[1])) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  spent = ARGV[1]
end
local reserved = held()
return {spent or '0', string.format('%.0f', reserved)}
"""
)


class RedisDailySpend(DailySpend):
    """The day's monitoring spend and reservations in Redis, shared by every process (see the module docstring).

    Keys (under ``prefix``): ``spend:{day}`` (integer 1e-12 USD) and ``res:{day}`` (the reservations in flight,
    each expiring ``hold_s`` after its last change, so a process that died mid-sample holds nothing for long);
    both expire :data:`DAY_TTL_S` after their last write. ``spent_usd`` and ``reserved_usd`` are the figures the
    last answer from Redis carried (the spend only grows within a day: a figure at the budget stays there).
    """

    shared = True

    def __init__(
        self,
        budget_usd: Decimal,
        client: Redis,
        *,
        prefix: str = "gw:quality:",
        hold_s: float = 180.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(budget_usd, clock)
        self.client = client
        self.prefix = prefix
        self._hold_ms = int(hold_s * 1000)
        self._monotonic = monotonic
        self._reserved = 0  # units, every process's, as Redis last said
        self._down_until = -RECHECK_S
        self._down = False
        self._ledger = Decimal(0)  # the ledger's figure for today, last read: the seed of a counter Redis lost
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._sync = client.register_script(_SYNC)

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:
            self.day, self._spent, self._reserved, self._ledger = today, Decimal(0), 0, Decimal(0)

    @property
    def reserved_usd(self) -> Decimal:
        self._roll()
        return from_pico(self._reserved)

    def _keys(self, day: str) -> list[str]:
        return [f"{self.prefix}spend:{day}", f"{self.prefix}res:{day}"]

    def _seen(self, day: str, spent: Any, reserved: Any) -> None:
        self._roll()
        if day == self.day:
            self._spent = from_pico(int(_text(spent) or 0))
            self._reserved = int(float(_text(reserved) or 0))
        if self._down:
            self._down = False
            log.info("quality monitor: the budget in Redis answers again; sampling resumes")

    def _failed(self, what: str, exc: BaseException) -> None:
        self._down_until = self._monotonic() + RECHECK_S
        if not self._down:
            self._down = True
            log.warning(
                "quality monitor: the budget in Redis is unavailable (%s: %r): no samples start until it answers "
                "(client traffic is not affected)",
                what,
                exc,
            )

    def blocked(self) -> Blocked | None:
        if self._monotonic() < self._down_until:
            return "unavailable"
        return "budget" if self.exhausted() else None

    async def _run(self, script: Any, day: str, args: list[str | int], what: str) -> list[Any]:
        from cache.redis_errors import translated

        try:
            with translated():
                return cast(list[Any], await script(keys=self._keys(day), args=args))
        except OSError as exc:
            self._failed(what, exc)
            raise

    def _seed(self) -> int:
        return to_pico(max(self._spent, self._ledger))

    async def reserve(self, name: str, usd: Decimal, *, check: bool = True) -> Reservation | None:
        """Hold ``usd`` for a sample in Redis; None when ``check`` and the day's spend plus every process's
        reservations is not under the budget.

        Raises:
            OSError: Redis did not answer (logged once per outage; sampling stops for :data:`RECHECK_S`).
        """
        self._roll()
        day = self.day
        reservation = Reservation(day, f"{name[:64]}:{secrets.token_hex(4)}", to_pico(usd))
        budget = to_pico(self.budget_usd)
        args: list[str | int] = [
            budget, "", reservation.member, 1 if check else 0, self._hold_ms, self._seed(), DAY_TTL_S
        ]  # fmt: skip
        ok, spent, reserved = await self._run(self._reserve, day, args, "reserve")
        self._seen(day, spent, reserved)
        if not int(ok):
            return None
        return reservation

    async def grow(self, reservation: Reservation, usd: Decimal) -> None:
        old = reservation.member
        reservation.held += to_pico(usd)
        reservation.seq += 1
        budget = to_pico(self.budget_usd)
        args: list[str | int] = [budget, old, reservation.member, 0, self._hold_ms, self._seed(), DAY_TTL_S]
        try:
            _, spent, reserved = await self._run(self._reserve, reservation.day, args, "grow")
        except OSError:
            return  # the sample goes on: it was admitted
        self._seen(reservation.day, spent, reserved)

    async def settle(self, reservation: Reservation, bound: Decimal, actual: Decimal) -> None:
        old = reservation.member
        reservation.held = max(0, reservation.held - to_pico(bound))
        reservation.seq += 1
        args: list[str | int] = [old, reservation.member, to_pico(actual), self._hold_ms, self._seed(), DAY_TTL_S]
        try:
            spent, reserved = await self._run(self._settle, reservation.day, args, "settle")
        except OSError:
            self._spent += actual  # the ledger has the row: the next sync raises the counter to it
            return
        self._seen(reservation.day, spent, reserved)

    async def release(self, reservation: Reservation) -> None:
        member, reservation.held = reservation.member, 0
        try:
            spent, reserved = await self._run(self._release, reservation.day, [member], "release")
        except OSError:
            return  # it expires on its own
        self._seen(reservation.day, spent, reserved)

    async def sync(self, day: str, ledger_usd: Decimal) -> None:
        self._roll()
        if day != self.day:
            return
        self._ledger = ledger_usd
        try:
            spent, reserved = await self._run(self._sync, day, [to_pico(ledger_usd), DAY_TTL_S], "sync")
        except OSError:
            return
        self._seen(day, spent, reserved)

    async def counted(self) -> tuple[Decimal, Decimal] | None:
        self._roll()
        day = self.day
        try:
            spent, reserved = await self._run(self._sync, day, ["", DAY_TTL_S], "read")
        except OSError:
            return None
        self._seen(day, spent, reserved)
        return from_pico(int(_text(spent) or 0)), from_pico(int(float(_text(reserved) or 0)))

    async def aclose(self) -> None:
        await self.client.aclose()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def build_daily_spend(settings: Settings) -> DailySpend:
    """The monitor's budget: in Redis when one is configured for limits and budgets (``auth.redis_url``, else
    ``cache.redis_url``), shared by every process; else in this process. Called from the app's lifespan (through
    :func:`gateway.components.build_monitor`); the monitor closes it."""
    cfg = settings.quality
    url = settings.auth.redis_url or settings.cache.redis_url
    if not url:
        return DailySpend(cfg.daily_budget_usd)
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # As the limits' client (gateway/auth/admission.py): one immediate retry on a connection error, so a Redis
    # restart costs no sample; each script is safe to run twice.
    client = Redis.from_url(
        url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name="llm-gateway-quality",
    )
    # A reservation outlives its sample's timeout, so it is never dropped under a sample still running.
    hold_s = cfg.timeout_seconds + 60.0
    return RedisDailySpend(cfg.daily_budget_usd, client, prefix=cfg.redis_prefix, hold_s=hold_s)
