"""Failed master-key attempts: logged, and throttled per peer address.

An admin endpoint answers 401 to a wrong master key. Without a trace or a limit, a client could try keys at the
speed of the connection (~1,600 a second measured) and nobody would know; with the master key anyone can mint
keys. Each peer address gets :data:`MAX_FAILURES` wrong keys a window of :data:`WINDOW_SECONDS`; past that its wrong
keys get a 429 until the window ends. The right key always passes: behind a proxy or a NAT every client shares the
address, and a lock on the address let anyone lock the admins out. A virtual key (a tenant's own, answered 403),
no key, and ``/ready`` (whose detail is optional) are not failures. The first failure of a window and the lock are
logged (a warning each, with the address, never the key tried). What keeps the master key from being guessed is
its length (at least 16 characters on a non-loopback address); this makes guessing visible.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("gateway.admin")

#: Wrong master keys a peer may send in one window before its admin requests are refused.
MAX_FAILURES = 20
#: The window's length.
WINDOW_SECONDS = 60.0
#: Peers remembered at most (the oldest forgotten first): a bound on memory under a scan from many addresses.
MAX_PEERS = 4096


class AdminGuard:
    """Counts wrong master keys per peer address in fixed windows (this process only)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._peers: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (window start, failures)

    def _entry(self, peer: str) -> tuple[float, int]:
        now = self._clock()
        start, failures = self._peers.get(peer, (now, 0))
        if now - start >= WINDOW_SECONDS:
            start, failures = now, 0
        return start, failures

    def locked_for(self, peer: str) -> int | None:
        """Seconds until ``peer`` may try again, or None when it is not locked."""
        start, failures = self._entry(peer)
        if failures < MAX_FAILURES:
            return None
        return max(1, math.ceil(start + WINDOW_SECONDS - self._clock()))

    def failed(self, peer: str, endpoint: str) -> None:
        """Count one wrong key from ``peer`` (logged when it starts a window and when it locks the peer)."""
        start, failures = self._entry(peer)
        failures += 1
        self._peers[peer] = (start, failures)
        self._peers.move_to_end(peer)
        while len(self._peers) > MAX_PEERS:
            self._peers.popitem(last=False)
        if failures == 1:
            log.warning("admin: wrong master key from %s on %s", peer, endpoint)
        elif failures == MAX_FAILURES:
            log.warning(
                "admin: %d wrong master keys from %s within %.0f s: its admin requests are refused (429) until the "
                "window ends",
                failures,
                peer,
                WINDOW_SECONDS,
            )
