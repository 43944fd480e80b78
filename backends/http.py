"""Upstream HTTP for the backends that speak it: the aiohttp session they share, proxies, and errors.

The app's lifespan builds one :class:`aiohttp.ClientSession` with :func:`build_session` and hands it to
every ``openai`` and ``vllm`` backend; aiohttp keeps a keep-alive pool per origin (scheme, host, port)
inside it (HTTP/1.1; TLS verified against the system's trust store, or the bundle ``SSL_CERT_FILE``
names). What the gateway sets beyond aiohttp's defaults, and why:

* no overall connection cap (aiohttp's default is 100 across all upstreams), ``max_connections`` per
  origin; idle connections are closed after ``keepalive_seconds``;
* no cookie jar: a cookie one upstream sets must not travel with another caller's request;
* proxies from ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` are resolved once per upstream URL by
  :func:`proxy_for` (what ``trust_env=True`` resolves, minus its two worker-thread hops per request
  for the proxy and ``~/.netrc`` lookups).

aiohttp never sends a ``POST`` twice: its one silent retry, on a pooled connection that the upstream had
closed meanwhile, is for idempotent methods only. :func:`upstream_error` turns aiohttp's exceptions into
the gateway's :class:`~gateway.errors.UpstreamError` tree, so nothing above ``backends/`` sees them.
"""

from __future__ import annotations

import re

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

#: What a backend catches around a request: aiohttp's failures and its timeouts (``ClientTimeout.total``
#: raises a bare ``TimeoutError``).
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


def build_session(
    *, max_connections: int, keepalive_seconds: float, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    """The session every HTTP backend sends through (call inside the running event loop; close it with
    ``await session.close()``). Timeouts are per backend, passed with each request; ``trace_configs`` are
    aiohttp's request hooks (OpenTelemetry's context propagation)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=max_connections, keepalive_timeout=keepalive_seconds)
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trace_configs=trace_configs or None
    )


def proxy_for(url: str) -> URL | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``/``HTTPS_PROXY``, with credentials from
    the proxy URL or ``~/.netrc``), or None when there is none or ``NO_PROXY`` exempts the host."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None
    # Credentials travel in the URL: aiohttp sends them as Proxy-Authorization, tunnelled or not.
    return proxy.with_user(auth.login).with_password(auth.password) if auth is not None else proxy


def upstream_error(exc: aiohttp.ClientError | TimeoutError, backend: str, what: str) -> UpstreamError:
    """The gateway's error for a failed request to ``backend`` (``what`` names the stage, for the message)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"upstream '{backend}' timed out connecting ({what})", backend=backend, reached=False)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return UpstreamTimeout(f"upstream '{backend}' sent nothing in time ({what})", backend=backend)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream '{backend}' exceeded its total timeout ({what})", backend=backend)
    detail = f"{type(exc).__name__}: {exc}"  # addresses and errno: for the log, not the client
    reached = not isinstance(exc, aiohttp.ClientConnectorError)  # no connection: nothing was sent
    return UpstreamUnavailable(
        f"upstream '{backend}' unreachable ({what})", backend=backend, detail=detail, reached=reached
    )


#: What an upstream's error text must not pass on: URLs, file paths, addresses with ports, IP addresses.
_LEAKS = re.compile(
    r"""[a-z][a-z0-9+.-]*://[^\s'"]+"""  # URLs
    r"""|(?<![\w.])(?:[A-Za-z]:\\|~?/)[\w.@%+-]+(?:[/\\][\w.@%+-]+)+"""  # absolute paths (POSIX, Windows)
    r"|\[?[0-9a-fA-F:]*:[0-9a-fA-F:]+\]?:\d{2,5}"  # [v6]:port
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"  # v4[:port]
    r"|\b[\w-]+(?:\.[\w-]+)*:\d{2,5}\b",  # host:port
    re.IGNORECASE,
)
#: The longest upstream error message passed on to a client.
MAX_UPSTREAM_MESSAGE = 500


def scrub(text: str) -> str:
    """``text`` from an upstream, safe to show a client: addresses and paths replaced, length bounded."""
    return _LEAKS.sub("[redacted]", text[: MAX_UPSTREAM_MESSAGE * 2])[:MAX_UPSTREAM_MESSAGE]


def shown_url(url: str) -> str:
    """``url`` for a log line: without its user and password and its query (credentials some deployments put in
    a model's ``base_url``)."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<unparsable url>"
    return str(parsed.with_user(None).with_query(None)) if parsed.is_absolute() else str(parsed.with_query(None))
