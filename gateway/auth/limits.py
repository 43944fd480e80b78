"""Rate limits and budgets per virtual key: atomic across replicas in Redis, or in process.

Semantics (identical in both implementations):

* **RPM**: a token bucket of ``rpm`` requests refilled at ``rpm/60`` per second; a request takes one.
* **TPM**: a token bucket of ``tpm`` tokens refilled at ``tpm/60`` per second. A request is admitted
  while the bucket is not empty; at settle it is charged its actual prompt + completion tokens (so the
  bucket can go into debt, and the next requests wait until it refills).
* **Budget**: spend so far plus the reservations of requests in flight plus this request's reserve
  (a conservative estimate of its cost) must not exceed the budget. At settle the reservation is
  released and the actual cost charged. Spend can only pass the budget when requests cost more than
  they reserved, and then by no more than those requests in flight. Reservations of a replica that
  died expire after ``auth.reservation_ttl_seconds``.
* **Revocation**: a revoked key id is refused by the same atomic call (a Redis set shared by replicas).

Money is counted in integer nano-dollars here (charges rounded up): exact in Lua's doubles up to about
9 million USD. The ledger keeps the exact 1e-12 amounts.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Protocol, cast

from redis.asyncio import Redis

NANO = Decimal(10) ** 9


def to_nano(amount: Decimal) -> int:
    """USD as integer nano-dollars, rounded up."""
    return int((amount * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(value: int) -> Decimal:
    """Integer nano-dollars as USD."""
    return Decimal(value) / NANO


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits of one key (None: unlimited)."""

    budget_nano: int | None = None
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What :meth:`Limiter.admit` took, for :meth:`Limiter.settle`."""

    key_id: str
    member: str
    reserve_nano: int
    limits: KeyLimits


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of an admission check."""

    outcome: str  # ok | revoked | budget | rpm | tpm
    retry_after_s: int = 0
    spent_nano: int = 0
    reserved_nano: int = 0
    reservation: Reservation | None = None


class Limiter(Protocol):
    """Atomic limit checks; ``admit`` reserves, ``settle`` charges."""

    async def admit(
        self, key_id: str, limits: KeyLimits, *, reserve_nano: int, request_id: str, spent_seed_nano: int
    ) -> Verdict:
        """Check revocation, budget, RPM and TPM at once; reserve when the answer is ``ok``."""
        ...

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        """Release the reservation, charge the cost and the tokens."""
        ...

    async def revoke(self, key_id: str) -> None:
        """Refuse this key from now on."""
        ...

    async def spent_nano(self, key_id: str) -> int | None:
        """Spend charged so far (None: never seen)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


# -- in process -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    level: float
    ts: float

    def refill(self, capacity: int, now: float) -> float:
        self.level = min(float(capacity), self.level + (now - self.ts) * capacity / 60.0)
        self.ts = now
        return self.level


@dataclass(slots=True)
class _KeyState:
    spent_nano: int
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # member -> (nano, expires)
    rpm: _Bucket | None = None
    tpm: _Bucket | None = None


class MemoryLimiter:
    """The limits in this process only (no Redis): replicas do not share them."""

    def __init__(self, *, reservation_ttl_s: float = 900.0) -> None:
        self._keys: dict[str, _KeyState] = {}
        self._revoked: set[str] = set()
        self._ttl = reservation_ttl_s

    async def admit(
        self, key_id: str, limits: KeyLimits, *, reserve_nano: int, request_id: str, spent_seed_nano: int
    ) -> Verdict:
        # No await below: atomic within the event loop.
        if key_id in self._revoked:
            return Verdict("revoked")
        now = time.monotonic()
        st = self._keys.setdefault(key_id, _KeyState(spent_seed_nano))
        st.reservations = {m: v for m, v in st.reservations.items() if v[1] > now}
        reserved = sum(v[0] for v in st.reservations.values())
        if limits.budget_nano is not None and st.spent_nano + reserved + reserve_nano > limits.budget_nano:
            return Verdict("budget", spent_nano=st.spent_nano, reserved_nano=reserved)
        if limits.rpm:
            st.rpm = st.rpm or _Bucket(float(limits.rpm), now)
            level = st.rpm.refill(limits.rpm, now)
            if level < 1:
                return Verdict("rpm", retry_after_s=max(1, math.ceil((1 - level) * 60 / limits.rpm)))
        if limits.tpm:
            st.tpm = st.tpm or _Bucket(float(limits.tpm), now)
            level = st.tpm.refill(limits.tpm, now)
            if level <= 0:
                return Verdict("tpm", retry_after_s=max(1, math.ceil(-level * 60 / limits.tpm)))
        if st.rpm is not None and limits.rpm:
            st.rpm.level -= 1
        member = f"{request_id[:64]}:{secrets.token_hex(6)}:{reserve_nano}"
        st.reservations[member] = (reserve_nano, now + self._ttl)
        return Verdict("ok", reservation=Reservation(key_id, member, reserve_nano, limits))

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        st = self._keys.get(reservation.key_id)
        if st is None:
            return
        st.reservations.pop(reservation.member, None)
        st.spent_nano += cost_nano
        tpm = reservation.limits.tpm
        if tpm and tokens > 0:
            now = time.monotonic()
            st.tpm = st.tpm or _Bucket(float(tpm), now)
            st.tpm.refill(tpm, now)
            st.tpm.level -= tokens

    async def revoke(self, key_id: str) -> None:
        self._revoked.add(key_id)

    async def spent_nano(self, key_id: str) -> int | None:
        st = self._keys.get(key_id)
        return None if st is None else st.spent_nano

    async def aclose(self) -> None:
        return None


# -- Redis ----------------------------------------------------------------------------------------------

_ADMIT = """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {'revoked'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budget = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
local ttl = tonumber(ARGV[8])
redis.call('SET', KEYS[1], ARGV[7], 'NX')
local spent = tonumber(redis.call('GET', KEYS[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local reserved = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  reserved = reserved + tonumber(string.match(m, ':(%d+)$'))
end
if budget >= 0 and spent + reserved + reserve > budget then
  return {'budget', '0', tostring(spent), tostring(reserved)}
end
local h = redis.call('HMGET', KEYS[3], 'r', 'rt', 't', 'tt')
local rlevel = nil
if rpm > 0 then
  local lvl = tonumber(h[1]) or rpm
  local ts = tonumber(h[2]) or now
  lvl = math.min(rpm, lvl + math.max(0, now - ts) * rpm / 60)
  if lvl < 1 then return {'rpm', tostring(math.max(1, math.ceil((1 - lvl) * 60 / rpm)))} end
  rlevel = lvl - 1
end
if tpm > 0 then
  local lvl = tonumber(h[3]) or tpm
  local ts = tonumber(h[4]) or now
  lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60)
  if lvl <= 0 then return {'tpm', tostring(math.max(1, math.ceil(-lvl * 60 / tpm)))} end
  redis.call('HSET', KEYS[3], 't', tostring(lvl), 'tt', tostring(now))
end
if rlevel ~= nil then
  redis.call('HSET', KEYS[3], 'r', tostring(rlevel), 'rt', tostring(now))
end
redis.call('EXPIRE', KEYS[3], 3600)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
redis.call('EXPIRE', KEYS[2], ttl + 60)
return {'ok'}
"""

_SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCRBY', KEYS[1], ARGV[2])
local tpm = tonumber(ARGV[4])
local tokens = tonumber(ARGV[3])
if tpm > 0 and tokens > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local h = redis.call('HMGET', KEYS[3], 't', 'tt')
  local lvl = tonumber(h[1]) or tpm
  local ts = tonumber(h[2]) or now
  lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60) - tokens
  redis.call('HSET', KEYS[3], 't', tostring(lvl), 'tt', tostring(now))
  redis.call('EXPIRE', KEYS[3], 3600)
end
return 1
"""


class RedisLimiter:
    """The limits in Redis: every check-and-reserve is one Lua script, atomic across replicas.

    Keys (under ``prefix``): ``spend:{id}`` (nano-dollars, no expiry), ``res:{id}`` (a sorted set of
    reservations scored by expiry), ``rate:{id}`` (bucket levels), and ``revoked`` (a set of key ids).
    """

    def __init__(self, client: Redis, *, prefix: str = "gw:auth:", reservation_ttl_s: int = 900) -> None:
        self.client = client
        self.prefix = prefix
        self._ttl = reservation_ttl_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def _keys(self, key_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}spend:{key_id}", f"{p}res:{key_id}", f"{p}rate:{key_id}", f"{p}revoked"]

    async def admit(
        self, key_id: str, limits: KeyLimits, *, reserve_nano: int, request_id: str, spent_seed_nano: int
    ) -> Verdict:
        member = f"{request_id[:64]}:{secrets.token_hex(6)}:{reserve_nano}"
        args: list[str | int] = [
            key_id,
            -1 if limits.budget_nano is None else limits.budget_nano,
            reserve_nano,
            limits.rpm or 0,
            limits.tpm or 0,
            member,
            spent_seed_nano,
            self._ttl,
        ]
        raw = cast(list[bytes | str], await self._admit(keys=self._keys(key_id), args=args))
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        kind = out[0]
        if kind == "ok":
            return Verdict("ok", reservation=Reservation(key_id, member, reserve_nano, limits))
        if kind == "budget":
            return Verdict("budget", spent_nano=int(float(out[2])), reserved_nano=int(float(out[3])))
        if kind in ("rpm", "tpm"):
            return Verdict(kind, retry_after_s=int(float(out[1])))
        return Verdict(kind)

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        keys = self._keys(reservation.key_id)[:3]
        args: list[str | int] = [reservation.member, cost_nano, tokens, reservation.limits.tpm or 0]
        await self._settle(keys=keys, args=args)

    async def revoke(self, key_id: str) -> None:
        await self.client.sadd(f"{self.prefix}revoked", key_id)

    async def spent_nano(self, key_id: str) -> int | None:
        value = await self.client.get(f"{self.prefix}spend:{key_id}")
        return None if value is None else int(value)

    async def aclose(self) -> None:
        await self.client.aclose()
