"""Stage 1 of the pipeline: who is calling, may they, and what to reserve against their budget.

With ``auth.enabled`` every ``/v1`` request needs ``Authorization: Bearer <key>``: a virtual key
(``sk-gw-...``) or the master key (``GATEWAY_MASTER_KEY``, compared in constant time; it has no limits).

Key records are cached in process for ``auth.key_cache_seconds`` (10 s), so the database is not read on
every request. Revocation is visible on every replica at once when limits live in Redis (the revoked
set is checked in the same atomic call as the limits); without Redis, a revocation made through this
process's admin API is immediate here, and other processes see it within ``auth.key_cache_seconds``.

Admin endpoints (``authorize_admin``) always need the master key; without one configured they are off.
A master key turns keys on (``auth.enabled`` unset); ``auth.enabled: false`` with one is refused at start.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from cache.base import StoreError
from gateway.accounting.db import Database
from gateway.auth.admin_guard import AdminGuard
from gateway.auth.keys import KEY_PREFIX, KeyRecord, KeyStore, hash_key
from gateway.auth.limits import NANO, KeyLimits, Limiter, MemoryLimiter, Reservation, from_nano, to_nano
from gateway.config import Settings, resolve_auth
from gateway.context import Caller, RequestContext
from gateway.errors import BudgetExceeded, Forbidden, GatewayError, RateLimited, Unauthorized
from gateway.features import IMAGE_TOKENS_AT_MOST, images_and_token_ids
from gateway.logs import OutageLog
from gateway.pricing import static_price
from gateway.protocol import generated_per_prompt, prompt_count, requested_max_tokens
from gateway.tokens import bound_from_json

log = logging.getLogger("gateway.auth")

MASTER_KEY_ID = "master"
_RESERVATION = "gw_reservation"


class ServiceUnavailable(GatewayError):
    """The key database or the limits store cannot be reached (503)."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "auth_store_unavailable"


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None
    spent: Decimal
    expires: float


class KeyCache:
    """Key records by secret hash, kept ``ttl`` seconds (bounded LRU; concurrent misses share one read).

    A read of the database gives up after ``timeout_s`` (a partition holds a connection open and silent). While
    the database fails, a record already cached is used for another ``ttl`` (one read a key per ``ttl``, not one
    per request) and the outage is logged once per 30 s, then once when it answers again.
    """

    def __init__(self, store: KeyStore, ttl: float, timeout_s: float = 10.0, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl = ttl
        self.timeout_s = timeout_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._loading: dict[str, asyncio.Future[_Entry]] = {}
        self._outage = OutageLog(log)

    async def lookup(self, secret: str) -> tuple[KeyRecord | None, Decimal]:
        """The record for ``secret`` (None: unknown) and the ledger's spend for it when it was read.

        Raises:
            ServiceUnavailable: the database failed and no earlier copy is cached.
        """
        digest = hash_key(secret)
        entry = self._entries.get(digest)
        if entry is not None and entry.expires > time.monotonic():
            self._entries.move_to_end(digest)
            return entry.record, entry.spent
        pending = self._loading.get(digest)
        if pending is not None:
            loaded = await asyncio.shield(pending)
            return loaded.record, loaded.spent
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            loaded = await self._load(secret, stale=entry)
        except BaseException as exc:  # waiters must never hang: pass the failure on, then re-raise
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # marked retrieved: the waiters re-raise it
            else:
                future.cancel()
            raise
        else:
            future.set_result(loaded)
        finally:
            del self._loading[digest]
        return loaded.record, loaded.spent

    async def spent_now(self, key_id: str) -> Decimal:
        """The ledger's spend for ``key_id``, read now.

        Raises:
            ServiceUnavailable: the database failed or did not answer in time.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                spent = await self.store.spent(key_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._outage.failed(f"key database unreachable ({_why(exc)}); a key's spend could not be read")
            raise ServiceUnavailable("The key database is unreachable; try again shortly.") from None
        self._outage.recovered("key database reachable again")
        return spent

    async def _load(self, secret: str, stale: _Entry | None) -> _Entry:
        digest = hash_key(secret)
        try:
            async with asyncio.timeout(self.timeout_s):
                record = await self.store.by_secret(secret)
                spent = await self.store.spent(record.id) if record is not None else Decimal(0)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            if stale is None:
                self._outage.failed(f"key database unreachable ({_why(exc)})")
                raise ServiceUnavailable("The key database is unreachable; try again shortly.") from None
            self._outage.failed(f"key database unreachable ({_why(exc)}); using cached key records")
            stale.expires = time.monotonic() + self.ttl  # asked again in ttl, not on every request
            self._entries[digest] = stale
            return stale
        self._outage.recovered("key database reachable again")
        entry = _Entry(record, spent, time.monotonic() + self.ttl)
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def invalidate(self, key_id: str) -> None:
        """Forget the cached record of ``key_id``."""
        for digest in [d for d, e in self._entries.items() if e.record is not None and e.record.id == key_id]:
            del self._entries[digest]


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a timeout has no message


class ReserveEstimator:
    """The worst-case cost of a request before routing: the dearest candidate model's price for the prompt's
    size (:func:`~gateway.tokens.bound_from_json`, 2 special tokens per input of a batch, and the model's
    ``max_image_tokens``, else
    :data:`~gateway.features.IMAGE_TOKENS_AT_MOST`, per image part and one per token id on top, which their bytes
    do not bound) plus every completion it may produce, i.e.
    prompts x ``n`` x the output limit (``max_tokens``, else the model's ``max_output_tokens``, else its context
    window, else ``auth.reserve_completion_tokens``). A chat request on a ``cascade`` route (or asking for that
    policy) may pay every rung's answer and the route's judge before each escalation: its worst case is their sum."""

    def __init__(self, settings: Settings) -> None:
        prices = {m.name: static_price(m) for m in settings.models}
        fallbacks = {m.name: m.fallbacks for m in settings.models}
        self._out_limit = {
            m.name: m.max_output_tokens or m.context_window or settings.auth.reserve_completion_tokens
            for m in settings.models
        }
        self._image_tokens = {
            m.name: IMAGE_TOKENS_AT_MOST if m.max_image_tokens is None else m.max_image_tokens for m in settings.models
        }

        def reach(names: list[str]) -> list[str]:
            return [n for n in dict.fromkeys(names + [f for n in names for f in fallbacks.get(n, [])]) if n in prices]

        self._prices = prices
        self._by_name: dict[str, list[str]] = {name: reach([name]) for name in prices}
        self._cascades: set[str] = set()
        self._judges: dict[str, tuple[str, int]] = {}  # route -> (judge model, its max_tokens)
        for route, spec in settings.resolved_routes().items():
            self._by_name[route] = reach(list(spec.models or []))
            if spec.policy == "cascade":
                self._cascades.add(route)
            if spec.verifier is not None and spec.verifier.model in prices:
                self._judges[route] = (spec.verifier.model, spec.verifier.max_tokens)
        self._all = list(prices)

    def _prompts(self, endpoint: str, body: dict[str, Any], names: list[str]) -> list[int]:
        """At most how many prompt tokens ``body`` bills on each of ``names``."""
        payload = body.get("messages") or body.get("prompt") or body.get("input") or ""
        # Tool schemas and a structured output's schema are read, and billed, as prompt too.
        extras = [body[k] for k in ("tools", "functions", "response_format") if body.get(k)]
        images, token_ids = images_and_token_ids(payload)  # billed far beyond their size in bytes
        prompt = bound_from_json(orjson.dumps(payload) + orjson.dumps(extras)) + token_ids
        # Each input of a batch gets its model's special tokens (BOS; [CLS] and [SEP]): a short one ("cat") bills
        # more tokens than its bytes bound.
        prompt += _SPECIAL_TOKENS_PER_INPUT * _inputs(endpoint, body)
        return [prompt + images * self._image_tokens[m] for m in names]

    def _completions(self, ctx: RequestContext, names: list[str]) -> list[int]:
        """At most how many completion tokens each of ``names`` may produce for ``ctx``."""
        body = ctx.body
        limit = requested_max_tokens(body)
        choices = generated_per_prompt(body) * prompt_count(ctx.endpoint, body)
        return [(limit if limit is not None else self._out_limit[m]) * choices for m in names]

    def reserve(self, ctx: RequestContext) -> tuple[Decimal, int]:
        """USD and tokens to reserve for ``ctx`` (its body parsed): the budget's worst case, and the key's TPM's
        (its prompt's bound and the most it may produce)."""
        names = self._by_name.get(ctx.requested_model) or self._all
        prompts = self._prompts(ctx.endpoint, ctx.body, names)
        if ctx.endpoint == "embeddings":
            usd = max((self._prices[m].cost(p, 0) for m, p in zip(names, prompts, strict=True)), default=Decimal(0))
            return usd, max(prompts, default=0)
        completions = self._completions(ctx, names)
        tokens = max((p + c for p, c in zip(prompts, completions, strict=True)), default=0)
        costs = [self._prices[m].cost(p, c) for m, p, c in zip(names, prompts, completions, strict=True)]
        route = ctx.requested_model
        cascade = route in self._cascades or ctx.constraints.policy == "cascade"
        if ctx.endpoint != "chat" or not cascade or len(costs) < 2:
            return max(costs, default=Decimal(0)), tokens
        judge = self._judges.get(route)
        # the judge reads its instructions (~256 tokens), the prompt and an answer; one call per escalation
        longest, prompt = max(completions, default=0), max(prompts, default=0)
        judged = Decimal(0) if judge is None else self._prices[judge[0]].cost(prompt + longest + 256, judge[1])
        # The TPM admits on the largest rung (the whole ladder's worst case, without max_tokens several times a
        # modest key's minute, refused requests that used ~150 tokens); settle charges every rung it paid for.
        return sum(costs, Decimal(0)) + judged * (len(costs) - 1), tokens


#: The special tokens a model adds to each input it reads, at most (BERT's [CLS] and [SEP]; Llama's BOS).
_SPECIAL_TOKENS_PER_INPUT = 2


def _inputs(endpoint: str, body: dict[str, Any]) -> int:
    """How many inputs a completions or embeddings request's batch holds (1 for one text or one list of ids; 0 for
    chat, whose template's tokens its bytes bound)."""
    if endpoint == "chat":
        return 0
    if endpoint == "completions":
        return prompt_count(endpoint, body)
    value = body.get("input") if endpoint == "embeddings" else None
    return len(value) if isinstance(value, list) and value and not isinstance(value[0], int) else 1


def _usd(nano: int) -> str:
    return f"${from_nano(nano):.6f}".rstrip("0").rstrip(".")


class KeyAdmission:
    """The :class:`~gateway.hooks.Admission` of virtual keys, limits and budgets."""

    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        limiter: Limiter,
        *,
        master_key: str | None,
        shared: bool,
    ) -> None:
        self.settings = settings
        self.enabled = settings.auth.enabled if settings.auth.enabled is not None else master_key is not None
        self.store = store
        self.limiter = limiter
        self.shared = shared  # limits live in Redis (shared by replicas)
        self.cache = KeyCache(store, settings.auth.key_cache_seconds, settings.ledger.connect_timeout_seconds)
        self.estimator = ReserveEstimator(settings)
        self._store_log = OutageLog(log)
        self._master = master_key.encode() if master_key else None
        self.admin_guard = AdminGuard()

    def is_master(self, secret: str | None) -> bool:
        """Whether ``secret`` is the master key (constant-time comparison)."""
        return bool(self._master and secret and hmac.compare_digest(secret.encode(), self._master))

    async def lookup(self, secret: str | None, *, fresh: bool = False) -> tuple[KeyRecord | None, Decimal]:
        """The live key record for ``secret`` and its ledger spend; ``(None, 0)`` for the master key.

        The record may be ``auth.key_cache_seconds`` old. Inference requests learn of a revocation made through
        another replica in their admission (the same Lua call as the limits); ``fresh`` asks the shared store
        now, for requests that are not admitted (reading spend, models, stored responses).

        Raises:
            Unauthorized: no key, an unknown key or a revoked one.
            ServiceUnavailable: the key database is unreachable.
        """
        if not secret:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (the OpenAI SDK's api_key)."
            )
        if self.is_master(secret):
            return None, Decimal(0)
        record, spent = (None, Decimal(0)) if not secret.startswith(KEY_PREFIX) else await self.cache.lookup(secret)
        if record is None or record.revoked or (fresh and await self._revoked_elsewhere(record.id)):
            raise Unauthorized("Incorrect API key provided, or the key was revoked.")
        return record, spent

    async def _revoked_elsewhere(self, key_id: str) -> bool:
        """Whether the shared store says ``key_id`` was revoked (then this process's cached record goes too)."""
        if not self.shared:
            return False
        try:
            revoked = await self.limiter.is_revoked(key_id)
        except StoreError as exc:  # the cached record stands, as it does for at most key_cache_seconds anyway
            log.warning("limits store unreachable checking a revocation (%s)", exc)
            return False
        if revoked:
            self.cache.invalidate(key_id)
        return revoked

    # -- Admission -------------------------------------------------------------------------------------

    async def identify(self, ctx: RequestContext, *, fresh: bool = False) -> None:
        """With keys on, authenticate ``ctx.api_key`` and carry the caller on ``ctx`` (once per request);
        ``fresh``: see :meth:`lookup`."""
        if not self.enabled:
            return
        record, spent = await self.lookup(ctx.api_key, fresh=fresh)
        if record is None:
            ctx.caller = Caller(MASTER_KEY_ID, name=MASTER_KEY_ID)
        else:
            ctx.caller = Caller(
                record.id,
                name=record.name,
                team=record.team,
                budget_usd=record.budget_usd,
                rpm=record.rpm,
                tpm=record.tpm,
                spent_usd=spent,
            )
        ctx.key_id = ctx.caller.key_id
        ctx.team = ctx.caller.team

    async def admit(self, ctx: RequestContext) -> None:
        """Check the identified caller's revocation, budget, RPM and TPM in one atomic step."""
        if not self.enabled:
            return
        caller = ctx.caller
        if caller is None:  # identify() did not run: refuse rather than admit an unknown caller
            raise Unauthorized("The request's API key was not checked.")
        if caller.key_id == MASTER_KEY_ID:
            return
        limits = KeyLimits(
            budget_nano=None
            if caller.budget_usd is None
            else int((caller.budget_usd * NANO).to_integral_value(rounding=ROUND_FLOOR)),
            rpm=caller.rpm,
            tpm=caller.tpm,
        )
        usd, tokens = (Decimal(0), 0) if limits.budget_nano is None and not limits.tpm else self.estimator.reserve(ctx)
        reserve = to_nano(usd) if limits.budget_nano is not None else 0
        seed, fresh = caller.spent_usd, False
        while True:
            try:
                verdict = await self.limiter.admit(
                    caller.key_id,
                    limits,
                    reserve_nano=reserve,
                    request_id=ctx.request_id,
                    spent_seed_nano=to_nano(seed),
                    reserve_tokens=tokens if limits.tpm else 0,
                    seed_fresh=fresh,
                )
            except StoreError as exc:
                if self.settings.auth.fail_open:
                    self._store_log.failed(f"limits store unreachable ({exc}); admitting without limits (fail_open)")
                    return
                raise ServiceUnavailable("The rate-limit store is unreachable; try again shortly.") from None
            self._store_log.recovered("limits store reachable again")
            if verdict.outcome != "seed" or fresh:
                break
            # The store lost the key's spend (Redis restarted empty): the ledger's figure now, not the cached one.
            seed, fresh = await self.cache.spent_now(caller.key_id), True
        if verdict.outcome == "ok":
            ctx.extra[_RESERVATION] = verdict.reservation
            if limits.budget_nano is not None:  # the pipeline cuts a stream or an answer that costs more
                ctx.spend_cap_usd = from_nano(reserve)
            return
        if verdict.outcome == "revoked":
            self.cache.invalidate(caller.key_id)
            raise Unauthorized("Incorrect API key provided, or the key was revoked.")
        if verdict.outcome == "budget":
            assert limits.budget_nano is not None
            raise BudgetExceeded(
                self._budget_message(caller, limits.budget_nano, verdict.spent_nano, verdict.reserved_nano, reserve)
            )
        what = "requests" if verdict.outcome == "rpm" else "tokens"
        limit = caller.rpm if verdict.outcome == "rpm" else caller.tpm
        raise RateLimited(
            f"Rate limit reached for key '{caller.name}': {limit} {what} per minute. "
            f"Retry after {verdict.retry_after_s} s.",
            headers={"retry-after": str(verdict.retry_after_s)},
        )

    @staticmethod
    def _budget_message(caller: Caller, budget: int, spent: int, reserved: int, reserve: int) -> str:
        head = f"Budget exceeded for key '{caller.name}': spent {_usd(spent)} of {_usd(budget)}"
        if spent >= budget:
            return head + "."
        return (
            f"{head}, {_usd(reserved)} reserved by requests in flight; this request may cost up to "
            f"{_usd(reserve)} (lower max_tokens to reserve less)."
        )

    async def settle(self, ctx: RequestContext) -> None:
        """Release the reservation and charge the actual cost and tokens (never raises)."""
        reservation = ctx.extra.pop(_RESERVATION, None)
        if not isinstance(reservation, Reservation):
            return
        # A cache hit's tokens never reached an upstream: they do not count against its key's TPM. A cascade's
        # escalated answers and its judge's calls did, as did a call that timed out after it reached the upstream.
        tokens = 0 if ctx.cache_hit else ctx.usage.prompt_tokens + ctx.usage.completion_tokens
        tokens += sum(a.prompt_tokens + a.completion_tokens for a in ctx.cascade_attempts)
        try:
            await self.limiter.settle(reservation, cost_nano=to_nano(ctx.cost_usd), tokens=tokens)
        except StoreError as exc:
            log.error("could not settle %s for key %s (%s)", ctx.request_id, reservation.key_id, exc)

    async def authorize_admin(self, ctx: RequestContext, peer: str | None = None, endpoint: str = "") -> None:
        """The master key, always (a loopback peer may be a reverse proxy); none configured: admin is off. A wrong
        key from ``peer`` (the client's address; None: not counted, as for ``/ready``'s optional detail) counts
        against it: too many and its wrong keys are refused for a while (:mod:`gateway.auth.admin_guard`)."""
        if self._master is not None:
            if self.is_master(ctx.api_key):
                return  # never locked out: an address may be a proxy or a NAT that an attacker shares
            # A virtual key is a tenant's own (a 403), not a guess at the master key.
            key = ctx.api_key
            guessing = peer is not None and key is not None and key != "" and not key.startswith(KEY_PREFIX)
            wait = self.admin_guard.locked_for(peer) if peer is not None and guessing else None
            if wait is not None:
                raise RateLimited(
                    f"Too many wrong master keys from this address: wrong ones are refused for {wait} s.",
                    code="admin_locked",
                    headers={"retry-after": str(wait)},
                )
            if guessing and peer is not None:
                self.admin_guard.failed(peer, endpoint)
            if ctx.api_key and ctx.api_key.startswith(KEY_PREFIX):
                raise Forbidden("This endpoint needs the master key; a virtual key cannot use it.")
            raise Unauthorized("This endpoint needs the master key: send 'Authorization: Bearer <master key>'.")
        raise Unauthorized(
            f"Admin endpoints are off: set {self.settings.auth.master_key_env} to administer the gateway."
        )

    # -- administration --------------------------------------------------------------------------------

    async def create_key(self, name: str, **limits: Any) -> tuple[KeyRecord, str]:
        """Create a key (see :meth:`KeyStore.create`)."""
        return await self.store.create(name, **limits)

    async def revoke_key(self, key_id: str) -> KeyRecord | None:
        """Revoke in the database, in the shared limits store, and in this process's cache."""
        record = await self.store.revoke(key_id)
        if record is not None:
            try:
                await self.limiter.revoke(key_id)
            except StoreError as exc:
                log.warning(
                    "revocation of %s not published to Redis (%s); replicas see it within %.0f s",
                    key_id,
                    exc,
                    self.cache.ttl,
                )
            self.cache.invalidate(key_id)
        return record

    async def aclose(self) -> None:
        """Close the limits store's connections."""
        await self.limiter.aclose()


async def build_key_admission(settings: Settings, db: Database) -> KeyAdmission:
    """Keys over ``db``; limits in Redis (``auth.redis_url``, else ``cache.redis_url``) or in process."""
    url = settings.auth.redis_url or settings.cache.redis_url
    limiter: Limiter
    if url:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        from gateway.auth.redis_limits import RedisLimiter

        # One immediate retry on a connection error: after a Redis restart every pooled connection is dead,
        # and each would otherwise fail one request (a 503 without auth.fail_open) before reconnecting.
        client = Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),  # not a timeout: see RedisLimiter
        )
        limiter = RedisLimiter(
            client, prefix=settings.auth.redis_prefix, reservation_ttl_s=settings.auth.reservation_ttl_seconds
        )
    else:
        limiter = MemoryLimiter(reservation_ttl_s=settings.auth.reservation_ttl_seconds)
        if settings.auth.enabled:
            log.info("no Redis configured: rate limits and budgets are enforced per process")
    master = os.environ.get(settings.auth.master_key_env) or None
    if settings.auth.enabled is None:
        settings = resolve_auth(settings)
    if settings.auth.enabled and master is None:
        log.warning("auth is enabled but %s is not set: admin endpoints are refused", settings.auth.master_key_env)
    return KeyAdmission(settings, KeyStore(db), limiter, master_key=master, shared=bool(url))
