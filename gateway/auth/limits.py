"""Rate limits and budgets per virtual key: atomic across replicas in Redis, or in process.

Semantics (identical in both implementations):

* **RPM**: a token bucket of ``rpm`` requests refilled at ``rpm/60`` per second; a request takes one.
* **TPM**: a token bucket of ``tpm`` tokens refilled at ``tpm/60`` per second. A request is admitted
  when the bucket holds its estimated tokens (``reserve_tokens``: its prompt's bound and every completion it
  may produce, as OpenAI counts ``max_tokens``; at most ``tpm`` are needed, so a request larger than the whole
  bucket waits for a full one), which it takes at once, so concurrent requests cannot all pass on one bucket's
  tokens; at settle the difference to its actual prompt + completion tokens is given back or taken (the bucket
  can go into debt, and the next requests wait until it refills). With no estimate, a request is admitted while
  the bucket is not empty.
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
from typing import Protocol

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
    reserve_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of an admission check."""

    outcome: str  # ok | revoked | budget | rpm | tpm | seed
    retry_after_s: int = 0
    spent_nano: int = 0
    reserved_nano: int = 0
    reservation: Reservation | None = None


class Limiter(Protocol):
    """Atomic limit checks; ``admit`` reserves, ``settle`` charges."""

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
        """Check revocation, budget, RPM and TPM at once; reserve when the answer is ``ok``.

        ``spent_seed_nano`` is the ledger's spend for the key, raising the store's counter when higher; unless
        ``seed_fresh``, it may be old (a cached key record's), and a store that lost the counter of a key with a
        budget answers ``seed``: read the ledger now and call again with ``seed_fresh``."""
        ...

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        """Release the reservation, charge the cost and the tokens."""
        ...

    async def revoke(self, key_id: str) -> None:
        """Refuse this key from now on."""
        ...

    async def is_revoked(self, key_id: str) -> bool:
        """Whether this key was revoked (through any replica sharing the store)."""
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
        # No await below: atomic within the event loop. Its counters live as long as the process, whose first
        # request for a key read the ledger: a seed is never needed again (``seed_fresh`` is not read).
        if key_id in self._revoked:
            return Verdict("revoked")
        now = time.monotonic()
        st = self._keys.setdefault(key_id, _KeyState(spent_seed_nano))
        st.spent_nano = max(st.spent_nano, spent_seed_nano)  # the ledger knows more (other processes' spend)
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
            need = min(reserve_tokens, limits.tpm)
            if level <= 0 or level < need:
                return Verdict("tpm", retry_after_s=max(1, math.ceil((need - level) * 60 / limits.tpm)))
            st.tpm.level -= reserve_tokens
        if st.rpm is not None and limits.rpm:
            st.rpm.level -= 1
        member = f"{request_id[:64]}:{secrets.token_hex(6)}:{reserve_nano}"
        st.reservations[member] = (reserve_nano, now + self._ttl)
        taken = reserve_tokens if limits.tpm else 0
        return Verdict("ok", reservation=Reservation(key_id, member, reserve_nano, limits, taken))

    async def settle(self, reservation: Reservation, *, cost_nano: int, tokens: int) -> None:
        st = self._keys.get(reservation.key_id)
        if st is None:
            return
        st.reservations.pop(reservation.member, None)
        st.spent_nano += cost_nano
        tpm = reservation.limits.tpm
        if tpm and (tokens > 0 or reservation.reserve_tokens > 0):
            now = time.monotonic()
            st.tpm = st.tpm or _Bucket(float(tpm), now)
            st.tpm.refill(tpm, now)
            st.tpm.level = min(float(tpm), st.tpm.level + reservation.reserve_tokens - tokens)

    async def revoke(self, key_id: str) -> None:
        self._revoked.add(key_id)

    async def is_revoked(self, key_id: str) -> bool:
        return key_id in self._revoked

    async def spent_nano(self, key_id: str) -> int | None:
        st = self._keys.get(key_id)
        return None if st is None else st.spent_nano

    async def aclose(self) -> None:
        return None
