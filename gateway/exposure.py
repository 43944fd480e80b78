"""Whether serving a configuration on a listen address exposes it: the checks ``gateway serve`` and the
server process run before they listen (:func:`exposure_problem` refuses, :func:`exposure_warning` warns at
every start), and the bounds of the ``--port``/``--workers`` flags (:func:`listen_flags_problem`).
"""

from __future__ import annotations

import ipaddress
import os

from gateway.config import MAX_PORT, Settings

#: The master key ``.env.example`` and ``compose.yaml`` ship: public, warned about on a non-loopback bind.
PLACEHOLDER_MASTER_KEY = "sk-gw-master-change-me"

#: Shortest master key accepted on a non-loopback address (loopback binds accept any).
MIN_PUBLIC_MASTER_KEY_CHARS = 16


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _master_key(settings: Settings) -> str | None:
    return os.environ.get(settings.auth.master_key_env) or None


def exposure_problem(settings: Settings, host: str) -> str | None:
    """Why serving ``settings`` on ``host`` is refused, or None: on a non-loopback address, auth off (unless
    explicitly allowed) or a master key shorter than :data:`MIN_PUBLIC_MASTER_KEY_CHARS`."""
    if is_loopback_host(host):
        return None
    env = settings.auth.master_key_env
    if not settings.auth.enabled:
        if settings.server.allow_unauthenticated:
            return None
        return (
            f"refusing to serve on {host} with auth off: anyone who reaches it can use every model; set "
            f"{env} (auth on), listen on 127.0.0.1, or allow it explicitly with "
            "server.allow_unauthenticated: true (or --allow-unauthenticated)"
        )
    key = _master_key(settings)
    if key is not None and len(key) < MIN_PUBLIC_MASTER_KEY_CHARS:
        return (
            f"refusing to serve on {host} with a {len(key)}-character {env}: set a real key of at least "
            f"{MIN_PUBLIC_MASTER_KEY_CHARS} characters (e.g. sk-gw-$(openssl rand -hex 24)), or listen on 127.0.0.1"
        )
    return None


def exposure_warning(settings: Settings, host: str) -> str | None:
    """What to warn about at every start of ``settings`` on ``host``: the public placeholder master key on a
    non-loopback address. Not refused: compose's container binds 0.0.0.0 with it by default and publishes the
    port on 127.0.0.1 only, which the gateway cannot see."""
    if is_loopback_host(host) or not settings.auth.enabled or _master_key(settings) != PLACEHOLDER_MASTER_KEY:
        return None
    return (
        f"{settings.auth.master_key_env} is the public placeholder {PLACEHOLDER_MASTER_KEY} while serving on {host}: "
        "anyone who reaches this port can administer the gateway and spend on every model; set a real key "
        "(e.g. sk-gw-$(openssl rand -hex 24))"
    )


def listen_flags_problem(port: int | None, workers: int | None) -> str | None:
    """Why ``--port``/``--workers`` are refused (the bounds of ``server.port`` and ``server.workers``), or None."""
    if port is not None and not 0 <= port <= MAX_PORT:
        return f"--port {port}: must be between 0 and {MAX_PORT} (0: any free port), as server.port"
    if workers is not None and workers < 1:
        return f"--workers {workers}: must be at least 1, as server.workers"
    return None
