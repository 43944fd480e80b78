"""The SQLite ledger writer's thread at idle CPU priority while the writer keeps up (Linux).

aiosqlite runs each SQLite connection in a thread of its own. The gateway's requests and that thread share the
process's CPU: on a core it has to itself, a batch written while requests arrive made them wait for the
scheduler (in ``bench/run_side_by_side.sh``, the one-connection p99 went from ~0.8 ms to ~2.5 ms whenever a
batch was written during the run). Linux's ``SCHED_IDLE`` policy gives a thread only the CPU no one else wants,
and a waking request thread preempts it at once; ``nice`` values do not (the scheduler still shares the core).

An idle thread gets almost nothing on a saturated core, so the writer's statements run at normal priority while
rows pile up (the ledger says when: twice ``ledger.batch_size`` rows waiting), and a statement that waits too
long at idle priority is finished at normal priority, as are the next few (:class:`WriterPriority`): on a busy
core the writer keeps up as before, on a core with room it takes only the room. Raising a thread's priority
needs ``CAP_SYS_NICE`` (or ``RLIMIT_NICE``): where the process may not (a container's default capabilities), the
writer runs at normal priority, as before, and says so once in the log.

PostgreSQL needs none of this: asyncpg runs on the event loop, the database's work in its own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("gateway.accounting")

#: Where :func:`record_thread_id` leaves a SQLite connection's thread id: the pool's per-connection ``info``.
THREAD_ID = "gateway_thread_id"
_IDLE: int | None = getattr(os, "SCHED_IDLE", None)
_OTHER: int | None = getattr(os, "SCHED_OTHER", None)


def record_thread_id(dbapi_connection: Any, info: dict[str, Any]) -> None:
    """Note in ``info`` the native id of the thread that runs ``dbapi_connection``'s statements (aiosqlite's),
    asked of the thread itself through a SQL function (nothing private of aiosqlite's is read)."""
    dbapi_connection.create_function("gateway_thread_id", 0, threading.get_native_id)
    cursor = dbapi_connection.cursor()
    cursor.execute("SELECT gateway_thread_id()")
    info[THREAD_ID] = cursor.fetchone()[0]
    cursor.close()


def _set(tid: int, policy: int) -> None:
    assert hasattr(os, "sched_setscheduler")  # Linux: _IDLE is None elsewhere and nothing calls this
    os.sched_setscheduler(tid, policy, os.sched_param(0))


def can_switch() -> bool:
    """Whether a thread of this process may go to idle priority and come back (tried on a throwaway thread)."""
    if _IDLE is None or _OTHER is None:
        return False
    idle, other = _IDLE, _OTHER
    result: list[bool] = []

    def attempt() -> None:
        try:
            _set(0, idle)
            _set(0, other)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="gateway-priority-probe")
    thread.start()
    thread.join()
    return result[0]


class WriterPriority:
    """Runs the writer's statements on its SQLite thread at idle priority, unless that starves them.

    Around each transaction, :meth:`begin` and :meth:`end`; around each statement, :meth:`watch`. A statement at
    idle priority that has not finished after :data:`STARVED_SECONDS` means the core is saturated: the thread
    goes back to normal priority for that statement and the next :data:`NORMAL_STATEMENTS` (then tries idle
    again). Inert where the switch is not allowed.
    """

    #: How long a statement may wait at idle priority before the thread is raised back to normal.
    STARVED_SECONDS = 0.05
    #: Statements at normal priority after a starved one: a saturated core costs one wait per this many.
    NORMAL_STATEMENTS = 20

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        #: Statements raised to normal priority because they starved at idle priority (a Prometheus counter).
        self.raised = 0
        self._tid: int | None = None
        self._idle = False
        self._normal_left = 0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def probe(cls) -> WriterPriority:
        """Enabled if this process may switch a thread both ways; otherwise logs why the writer stays normal."""
        enabled = can_switch()
        if not enabled and _IDLE is not None:
            log.info("ledger writer at normal CPU priority: raising a thread back from SCHED_IDLE needs CAP_SYS_NICE")
        return cls(enabled)

    def begin(self, info: dict[str, Any]) -> None:
        """A transaction starts on the connection whose pool ``info`` this is."""
        if self.enabled:
            self._tid = info.get(THREAD_ID)

    @contextlib.contextmanager
    def watch(self, behind: bool = False) -> Iterator[None]:
        """Around one statement of the transaction: at idle priority, raised to normal if it starves; at normal
        priority if the writer is ``behind`` (rows are piling up: on a busy core an idle thread crawls, at well
        under :data:`STARVED_SECONDS` a statement, and the queue would grow)."""
        if self._tid is None:
            yield
            return
        if behind:
            self._switch(idle=False)
        elif self._normal_left:
            self._normal_left -= 1
        else:
            self._switch(idle=True)
            if self._idle:
                self._timer = asyncio.get_running_loop().call_later(self.STARVED_SECONDS, self._starved)
        try:
            yield
        finally:
            self._disarm()

    def end(self) -> None:
        """The transaction is over: back to normal priority (the pool lends the connection to other work next)."""
        self._disarm()  # a statement cancelled with the transaction may not have disarmed its timer yet
        self._switch(idle=False)
        self._tid = None

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _starved(self) -> None:
        self._timer = None
        self.raised += 1
        self._normal_left = self.NORMAL_STATEMENTS
        self._switch(idle=False)

    def _switch(self, idle: bool) -> None:
        tid = self._tid
        if tid is None or idle == self._idle or _IDLE is None or _OTHER is None:
            return
        try:
            _set(tid, _IDLE if idle else _OTHER)
            self._idle = idle
        except OSError as exc:  # the thread is gone, or a policy forbids it: it stays as it is
            log.debug("ledger writer thread %s: priority unchanged (%s)", tid, exc)
