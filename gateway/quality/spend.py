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
  every reservation and settlement is one Lua script, atomic across every process and replica; a reservation keeps
  one name from reserve to release (a call cancelled or whose reply was lost never strands what it held) and a
  settle is applied once per id (redis-py's retry counts nothing twice). Its :meth:`~RedisDailySpend.blocked` reads
  a local copy of the last figures Redis returned, so the request path never waits on Redis; a Redis that fails
  (logged once per outage) never touches a client's request, and for :data:`RECHECK_S` blocks sampling when
  several processes share the budget, or, in the only process (:func:`single_process`), lets it count on its own
  as :class:`DailySpend` does. :meth:`~DailySpend.counted` (``GET /admin/quality``) reads without side effects.

Money is counted in integer units of 1e-12 USD (the ledger's and the price's resolution), so the Redis counter
and the ledger's sum of the same calls are equal to the last digit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
#: After Redis failed, how long this process samples nothing (several processes) or counts on its own (a single
#: process) before asking it again.
RECHECK_S = 5.0
#: prometheus_client's multiprocess directory, set by ``gateway serve`` for its workers when it runs several
#: (``gateway.metrics.MULTIPROC_ENV``; not imported: this module does not load the metrics).
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
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
    """What one sample holds of the day's budget: ``held`` units not yet spent or released, as far as this process
    knows (with Redis: what Redis last confirmed)."""

    day: str
    #: Its one name in the store (Redis's hash field), whatever happens to its calls: the release removes it.
    name: str
    held: int
    #: Settles sent so far: the next one's id is ``{name}:s{settles + 1}`` (a retry of one reuses its id).
    settles: int = 0
    #: Held in this process only (:class:`RedisDailySpend` counting on its own while Redis is down).
    local: bool = False


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
        self._held[reservation.name] = reservation.held

    async def settle(self, reservation: Reservation, bound: Decimal, actual: Decimal) -> None:
        """One call of ``reservation`` is over: its ``bound`` leaves the reservation, its ``actual`` cost is spent."""
        reservation.held = max(0, reservation.held - to_pico(bound))
        reservation.settles += 1
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

    def counts_locally(self) -> bool:
        """Whether the cap is checked against this process's own figure now (no Redis, or one process whose Redis is
        down): the monitor then re-reads the ledger's figure before a sample (``quality.budget_sync_seconds``)."""
        return True

    async def counted(self) -> tuple[Decimal, Decimal] | None:
        """What the cap is checked against now: (spent, reserved); None when the store does not answer. Read only:
        it changes nothing the workers' admission reads (``GET /admin/quality`` calls it)."""
        return self.spent_usd, self.reserved_usd

    async def aclose(self) -> None:
        """Close the store's connections."""


# Scripts: KEYS[1] the day's spend (integer 1e-12 USD), KEYS[2] its reservations (a hash: name -> units held),
# KEYS[3] their expiries (a sorted set: name -> ms), KEYS[4] the settles applied (a sorted set: settle id -> ms
# until which a retry of it is recognised). A reservation keeps its name from reserve to release, so a release
# removes it whatever its last call did (failed before Redis ran it, cancelled, its reply lost); each script is
# safe to run twice (redis-py retries once after a lost reply). Each returns the spend and every reservation's sum
# (strings) after its work.
_HELD = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%.0f', n) end
local function held(now)
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do redis.call('HDEL', KEYS[2], name) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do sum = sum + tonumber(v) end
  return sum
end
local function seeded(seed, ttl)
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], seed) end
  redis.call('EXPIRE', KEYS[1], ttl)
end
local function hold(name, units, now, ms, ttl)
  redis.call('HSET', KEYS[2], name, fmt(units))
  redis.call('ZADD', KEYS[3], now + tonumber(ms), name)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
"""

#: ARGV: budget, name, units, check ('1': refuse once the budget is used up), hold ms, seed (this process's figure
#: of the day's spend, for a counter Redis lost), ttl s. Returns {ok, spent, reserved}; a second run finds the
#: name and admits it again without holding twice.
_RESERVE = (
    _HELD
    + """
seeded(ARGV[6], ARGV[7])
local now = now_ms()
local reserved = held(now)
local spent = redis.call('GET', KEYS[1])
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {1, spent, fmt(reserved)} end
if ARGV[4] == '1' and tonumber(spent) + reserved >= tonumber(ARGV[1]) then return {0, spent, fmt(reserved)} end
hold(ARGV[2], tonumber(ARGV[3]), now, ARGV[5], ARGV[7])
return {1, spent, fmt(reserved + tonumber(ARGV[3]))}
"""
)

#: ARGV: name, units, hold ms, seed, ttl s. The reservation holds at least ``units`` (never lowered: a grow run
#: twice, or after one whose reply was lost, holds the same); one Redis dropped (expired) is held again: the sample
#: runs. Returns {spent, reserved, held}.
_GROW = (
    _HELD
    + """
seeded(ARGV[4], ARGV[5])
local now = now_ms()
local reserved = held(now)
local had = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local units = math.max(had, tonumber(ARGV[2]))
hold(ARGV[1], units, now, ARGV[3], ARGV[5])
return {redis.call('GET', KEYS[1]), fmt(reserved - had + units), fmt(units)}
"""
)

#: ARGV: name, settle id, bound, actual cost, hold ms, seed, ttl s. Applied once per settle id, whether or not the
#: reservation is still there (a retry after its expiry counts nothing again). Returns {spent, reserved, held}.
_SETTLE = (
    _HELD
    + """
seeded(ARGV[6], ARGV[7])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local reserved = held(now)
local had = redis.call('HGET', KEYS[2], ARGV[1])
local units = tonumber(had or '0')
if redis.call('ZADD', KEYS[4], 'NX', now + tonumber(ARGV[5]), ARGV[2]) == 1 then
  redis.call('EXPIRE', KEYS[4], ARGV[7])
  redis.call('INCRBY', KEYS[1], ARGV[4])
  if had then
    local left = math.max(0, units - tonumber(ARGV[3]))
    hold(ARGV[1], left, now, ARGV[5], ARGV[7])
    reserved = reserved - units + left
    units = left
  end
end
return {redis.call('GET', KEYS[1]), fmt(reserved), fmt(units)}
"""
)

#: ARGV: name.
_RELEASE = (
    _HELD
    + """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local reserved = held(now_ms())
return {redis.call('GET', KEYS[1]) or '0', fmt(reserved)}
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
local reserved = held(now_ms())
return {spent or '0', fmt(reserved)}
"""
)


class RedisDailySpend(DailySpend):
    """The day's monitoring spend and reservations in Redis, shared by every process (see the module docstring).

    Keys (under ``prefix``): ``spend:{day}`` (integer 1e-12 USD), ``held:{day}`` (each reservation in flight by
    name: the units it holds), ``until:{day}`` (when each expires: ``hold_s`` after its last change, so a process
    that died mid-sample holds nothing for long) and ``settled:{day}`` (the settles applied in the last ``hold_s``:
    a retried one counts once); all expire :data:`DAY_TTL_S` after their last write. ``spent_usd`` and
    ``reserved_usd`` are the figures the last answer from Redis carried (the spend only grows within a day: a
    figure at the budget stays there).

    ``single_process`` (:func:`single_process`): this is the deployment's only process. While Redis does not answer
    it then counts on its own (as without Redis: its own calls, raised to the ledger's figure, and what its samples
    in flight hold, :meth:`counts_locally`) instead of refusing every sample; with several processes no figure of
    one of them could hold the cap, so samples are refused (``blocked() == "unavailable"``).
    """

    shared = True

    def __init__(
        self,
        budget_usd: Decimal,
        client: Redis,
        *,
        prefix: str = "gw:quality:",
        hold_s: float = 180.0,
        single_process: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(budget_usd, clock)
        self.client = client
        self.prefix = prefix
        self.single_process = single_process
        self._hold_ms = int(hold_s * 1000)
        self._monotonic = monotonic
        self._reserved = 0  # units, every process's, as Redis last said
        self._down_until = -RECHECK_S
        self._down = False
        self._ledger = Decimal(0)  # the ledger's figure for today, last read: the seed of a counter Redis lost
        self._reserve = client.register_script(_RESERVE)
        self._grow = client.register_script(_GROW)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._sync = client.register_script(_SYNC)
        self._cleanups: set[asyncio.Task[None]] = set()  # releases of reservations whose reserve did not return

    def _roll(self) -> None:
        today = utc_day(self._clock())
        if today != self.day:
            self.day, self._spent, self._reserved, self._ledger = today, Decimal(0), 0, Decimal(0)

    @property
    def reserved_usd(self) -> Decimal:
        self._roll()
        if self.counts_locally():
            return from_pico(sum(self._held.values()))  # this process's, the only one
        return from_pico(self._reserved)

    def counts_locally(self) -> bool:
        return self.single_process and self._monotonic() < self._down_until

    def _keys(self, day: str) -> list[str]:
        p = self.prefix
        return [f"{p}spend:{day}", f"{p}held:{day}", f"{p}until:{day}", f"{p}settled:{day}"]

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
                "quality monitor: the budget in Redis is unavailable (%s: %r): %s (client traffic is not affected)",
                what,
                exc,
                "this process, the only one, counts the day's monitoring spend on its own (its calls and the "
                "ledger's figure) until it answers"
                if self.single_process
                else "no samples start until it answers",
            )

    def blocked(self) -> Blocked | None:
        if not self.single_process and self._monotonic() < self._down_until:
            return "unavailable"
        return "budget" if self.exhausted() else None

    async def _call(self, script: Any, day: str, args: list[str | int]) -> list[Any]:
        from cache.redis_errors import translated

        with translated():
            return cast(list[Any], await script(keys=self._keys(day), args=args))

    async def _run(self, script: Any, day: str, args: list[str | int], what: str) -> list[Any]:
        try:
            return await self._call(script, day, args)
        except OSError as exc:
            self._failed(what, exc)
            raise

    def _seed(self) -> int:
        return to_pico(max(self._spent, self._ledger))

    async def reserve(self, name: str, usd: Decimal, *, check: bool = True) -> Reservation | None:
        """Hold ``usd`` for a sample in Redis; None when ``check`` and the day's spend plus every process's
        reservations is not under the budget. While Redis is down, a single process holds it on its own.

        Raises:
            OSError: Redis did not answer (logged once per outage; several processes: sampling stops for
                :data:`RECHECK_S`).
        """
        self._roll()
        if self.counts_locally():
            return await self._reserve_here(name, usd, check)
        day = self.day
        reservation = Reservation(day, f"{name[:64]}:{secrets.token_hex(4)}", to_pico(usd))
        budget = to_pico(self.budget_usd)
        args: list[str | int] = [
            budget, reservation.name, reservation.held, 1 if check else 0, self._hold_ms, self._seed(), DAY_TTL_S
        ]  # fmt: skip
        try:
            ok, spent, reserved = await self._run(self._reserve, day, args, "reserve")
        except (OSError, asyncio.CancelledError) as exc:
            self._forget(day, reservation.name)  # Redis may have run it: nobody else can release it
            if isinstance(exc, OSError) and self.single_process:
                return await self._reserve_here(name, usd, check)
            raise
        self._seen(day, spent, reserved)
        if not int(ok):
            return None
        self._held[reservation.name] = reservation.held
        return reservation

    async def _reserve_here(self, name: str, usd: Decimal, check: bool) -> Reservation | None:
        reservation = await super().reserve(name, usd, check=check)
        if reservation is not None:
            reservation.local = True
        return reservation

    async def grow(self, reservation: Reservation, usd: Decimal) -> None:
        if reservation.local:
            return await super().grow(reservation, usd)
        units = reservation.held + to_pico(usd)
        args: list[str | int] = [reservation.name, units, self._hold_ms, self._seed(), DAY_TTL_S]
        try:
            spent, reserved, held = await self._run(self._grow, reservation.day, args, "grow")
        except OSError:
            return  # the sample goes on: it was admitted
        self._seen(reservation.day, spent, reserved)
        reservation.held = self._held[reservation.name] = int(float(_text(held) or 0))

    async def settle(self, reservation: Reservation, bound: Decimal, actual: Decimal) -> None:
        if reservation.local:
            return await super().settle(reservation, bound, actual)
        reservation.settles += 1  # this settle's id, taken before the call: another settle never reuses it
        settle_id = f"{reservation.name}:s{reservation.settles}"
        args: list[str | int] = [
            reservation.name, settle_id, to_pico(bound), to_pico(actual), self._hold_ms, self._seed(), DAY_TTL_S
        ]  # fmt: skip
        try:
            spent, reserved, held = await self._run(self._settle, reservation.day, args, "settle")
        except OSError:
            self._spent += actual  # the ledger has the row: the next sync raises the counter to it
            return
        self._seen(reservation.day, spent, reserved)
        reservation.held = self._held[reservation.name] = int(float(_text(held) or 0))

    async def release(self, reservation: Reservation) -> None:
        self._held.pop(reservation.name, None)
        if reservation.local:
            reservation.held = 0
            return
        try:
            spent, reserved = await self._run(self._release, reservation.day, [reservation.name], "release")
        except OSError:
            return  # it expires on its own
        except asyncio.CancelledError:
            self._forget(reservation.day, reservation.name)
            raise
        reservation.held = 0
        self._seen(reservation.day, spent, reserved)

    def _forget(self, day: str, name: str) -> None:
        """Release ``name`` in the background, quietly (a reserve whose answer never came, a release cancelled):
        what Redis may hold for it goes back to the budget now rather than at its expiry."""

        async def release() -> None:
            with contextlib.suppress(OSError):
                await self._call(self._release, day, [name])

        task = asyncio.get_running_loop().create_task(release(), name="quality-budget-release")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def sync(self, day: str, ledger_usd: Decimal) -> None:
        self._roll()
        if day != self.day:
            return
        self._ledger = ledger_usd
        if self.counts_locally():  # Redis was down a moment ago: this process's figure is raised, Redis asked later
            self._spent = max(self._spent, ledger_usd)
            return
        try:
            spent, reserved = await self._run(self._sync, day, [to_pico(ledger_usd), DAY_TTL_S], "sync")
        except OSError:
            if self.single_process:
                self._spent = max(self._spent, ledger_usd)
            return
        self._seen(day, spent, reserved)

    async def counted(self) -> tuple[Decimal, Decimal] | None:
        """Redis's figures now, read without side effects on this process (a failure is not an outage for the
        workers; the figures they admit against are not changed): ``GET /admin/quality``."""
        self._roll()
        try:
            spent, reserved = await self._call(self._sync, self.day, ["", DAY_TTL_S])
        except OSError:
            return None
        return from_pico(int(_text(spent) or 0)), from_pico(int(float(_text(reserved) or 0)))

    async def aclose(self) -> None:
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=1.0)
            for task in self._cleanups:
                task.cancel()
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
    alone = single_process(settings)
    return RedisDailySpend(cfg.daily_budget_usd, client, prefix=cfg.redis_prefix, hold_s=hold_s, single_process=alone)


def single_process(settings: Settings) -> bool:
    """Whether this gateway process is the only one of its server: ``server.workers`` is 1 and the environment
    does not name a multiprocess metrics directory (``PROMETHEUS_MULTIPROC_DIR``, which ``gateway serve`` sets for
    its workers when it runs more than one, ``--workers N`` included: :func:`gateway.server.metrics_dir`).
    Replicas do not see one another: each is a single process here (docs/quality.md, "Money")."""
    return settings.server.workers <= 1 and not os.environ.get(_MULTIPROC_ENV)
