"""The rate limits and budgets of :mod:`gateway.auth.limits` in Redis, shared by every replica.

Imported only when Redis is configured (redis-py costs ~7 MiB of memory).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import cast

from redis.asyncio import Redis

from cache.base import StoreError, StoreTimeout
from cache.redis_errors import translated
from gateway.auth.limits import KeyLimits, Reservation, Verdict

log = logging.getLogger("gateway.auth")

_ADMIT = """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {'revoked'} end
if redis.call('ZSCORE', KEYS[2], ARGV[6]) then return {'ok'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budget = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
local ttl = tonumber(ARGV[8])
local counter = redis.call('GET', KEYS[1])
if not counter and budget >= 0 and ARGV[10] ~= '1' then return {'seed'} end
local spent = tonumber(counter or '-1')
if spent < tonumber(ARGV[7]) then
  spent = tonumber(ARGV[7])
  redis.call('SET', KEYS[1], ARGV[7])
end
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
  local want = tonumber(ARGV[9])
  local need = math.min(want, tpm)
  local lvl = tonumber(h[3]) or tpm
  local ts = tonumber(h[4]) or now
  lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60)
  if lvl <= 0 or lvl < need then return {'tpm', tostring(math.max(1, math.ceil((need - lvl) * 60 / tpm)))} end
  lvl = lvl - want
  redis.call('HSET', KEYS[3], 't', tostring(lvl), 'tt', tostring(now))
  if lvl < 0 then redis.call('EXPIRE', KEYS[3], math.max(3600, math.ceil(-lvl * 60 / tpm) + 60)) end
end
if rlevel ~= nil then
  redis.call('HSET', KEYS[3], 'r', tostring(rlevel), 'rt', tostring(now))
end
if redis.call('TTL', KEYS[3]) < 3600 then redis.call('EXPIRE', KEYS[3], 3600) end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
redis.call('EXPIRE', KEYS[2], ttl + 60)
return {'ok'}
"""

_SETTLE = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('INCRBY', KEYS[1], ARGV[2])
local tpm = tonumber(ARGV[4])
local tokens = tonumber(ARGV[3])
local taken = tonumber(ARGV[6])
if tpm > 0 and (tokens > 0 or taken > 0) then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local h = redis.call('HMGET', KEYS[3], 't', 'tt')
  local lvl = tonumber(h[1]) or tpm
  local ts = tonumber(h[2]) or now
  lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60 + taken - tokens)
  redis.call('HSET', KEYS[3], 't', tostring(lvl), 'tt', tostring(now))
  redis.call('EXPIRE', KEYS[3], math.max(3600, math.ceil(-lvl * 60 / tpm) + 60))
end
return 1
"""

#: A reservation whose admission may have run although its reply never came (a timeout): removed if it is there,
#: its tokens given back; nothing else happens when it is not.
_RELEASE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local tpm = tonumber(ARGV[2])
local taken = tonumber(ARGV[3])
if tpm > 0 and taken > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local h = redis.call('HMGET', KEYS[3], 't', 'tt')
  local lvl = tonumber(h[1]) or tpm
  local ts = tonumber(h[2]) or now
  lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60 + taken)
  redis.call('HSET', KEYS[3], 't', tostring(lvl), 'tt', tostring(now))
end
return 1
"""

#: How long, and how many at once, reservations whose admission timed out are looked for to be released.
_RELEASE_FOR_S = 60.0
_RELEASES_AT_MOST = 1024

#: How long a settled reservation is remembered: a second run of its settle comes from redis-py's immediate retry,
#: within the call; kept short, since at 1,000 requests a second each marker costs Redis ~100 bytes for this long.
_SETTLED_TTL_S = 60


class RedisLimiter:
    """The limits in Redis: every check-and-reserve is one Lua script, atomic across replicas.

    redis-py's errors leave as :class:`cache.base.StoreError` (an ``OSError``).

    Keys (under ``prefix``): ``spend:{id}`` (nano-dollars, no expiry), ``res:{id}`` (a sorted set of
    reservations scored by expiry), ``rate:{id}`` (bucket levels, kept until a token debt is repaid),
    ``settled:{member}`` (a settled reservation, for a minute), and ``revoked`` (a set of key ids).

    Both scripts may run twice for one call (a reply lost to a timeout, then redis-py's retry): admitting a
    reservation already there is "ok" and changes nothing, settling one already settled charges nothing. The
    spend counter is raised to the ledger's figure for the key whenever that is higher (a settle lost while Redis
    was unreachable, or spend admitted under ``auth.fail_open``), once the key's record is read again; a counter
    Redis lost (a restart without its data) is set again from the ledger read at that moment, not from a cached
    figure (``seed``), else the key could spend its budget a second time.

    An admission whose reply timed out may still have run when Redis caught up: its reservation would hold part of
    the budget until it expired (``reservation_ttl_s``) with nothing in flight. It is looked for in the background
    for a minute and released when found.
    """

    def __init__(self, client: Redis, *, prefix: str = "gw:auth:", reservation_ttl_s: int = 900) -> None:
        self.client = client
        self.prefix = prefix
        self._ttl = reservation_ttl_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._releasing: set[asyncio.Task[None]] = set()

    def _keys(self, key_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}spend:{key_id}", f"{p}res:{key_id}", f"{p}rate:{key_id}", f"{p}revoked"]

    async def admit(
        self,
        key_id: str,
        limits: KeyLimits,
        *,
        reserve_nano: int,
        request_id: str,
        spent_seed_nano: int,
        reserve_tokens: int = 0,
        seed_fresh: bool = True,
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
            reserve_tokens,
            1 if seed_fresh else 0,
        ]
        try:
            with translated():
                raw = cast(list[bytes | str], await self._admit(keys=self._keys(key_id), args=args))
        except StoreTimeout:
            self._release_later(key_id, member, limits.tpm or 0, reserve_tokens if limits.tpm else 0)
            raise
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        kind = out[0]
        if kind == "ok":
            taken = reserve_tokens if limits.tpm else 0
            return Verdict("ok", reservation=Reservation(key_id, member, reserve_nano, limits, taken))
        if kind == "budget":
            return Verdict("budget", spent_nano=int(float(out[2])), reserved_nano=int(float(out[3])))
        if kind in ("rpm", "tpm"):
            return Verdict(kind, retry_after_s=int(float(out[1])))
        return Verdict(kind)

    def _release_later(self, key_id: str, member: str, tpm: int, taken: int) -> None:
        if len(self._releasing) >= _RELEASES_AT_MOST:  # a long outage: the reservations' TTL frees them
            return
        task = asyncio.get_running_loop().create_task(self._release_when_found(key_id, member, tpm, taken))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_when_found(self, key_id: str, member: str, tpm: int, taken: int) -> None:
        deadline = time.monotonic() + _RELEASE_FOR_S
        delay = 0.5
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
            try:
                with translated():
                    if await self._release(keys=self._keys(key_id), args=[member, tpm, taken]):
                        log.info("released reservation %s of key %s (its admission had timed out)", member, key_id)
                        return
            except StoreError:
                continue

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        keys = [*self._keys(reservation.key_id)[:3], f"{self.prefix}settled:{reservation.member}"]
        args: list[str | int] = [
            reservation.member,
            cost_nano,
            tokens,
            reservation.limits.tpm or 0,
            _SETTLED_TTL_S,
            reservation.reserve_tokens,
        ]
        with translated():
            await self._settle(keys=keys, args=args)

    async def revoke(self, key_id: str) -> None:
        with translated():
            await self.client.sadd(f"{self.prefix}revoked", key_id)

    async def is_revoked(self, key_id: str) -> bool:
        with translated():
            return bool(await self.client.sismember(f"{self.prefix}revoked", key_id))

    async def spent_nano(self, key_id: str) -> int | None:
        with translated():
            value = await self.client.get(f"{self.prefix}spend:{key_id}")
        return None if value is None else int(value)

    async def aclose(self) -> None:
        for task in list(self._releasing):
            task.cancel()
        await asyncio.gather(*self._releasing, return_exceptions=True)
        await self.client.aclose()
