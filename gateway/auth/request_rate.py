"""A key's requests-per-minute limit for ``/v1`` requests that call no model (feedback, token counts, ...).

Inference requests are admitted by :meth:`gateway.hooks.Admission.admit`: revocation, budget, RPM and TPM in one
atomic step, reserving the request's worst-case cost. A request that calls no model costs nothing and uses no
tokens, but it still takes the gateway's and the database's time, so it counts as one request in the **same** RPM
bucket as the key's inference (one limit per key: "requests per minute"), and nothing else.
:func:`charge_request` does that through the same ``admit`` and ``settle`` (Redis, shared by replicas, or in
process): the same 429 with ``retry-after``, the same revocation check and ``auth.fail_open``.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.context import RequestContext
from gateway.hooks import Admission

__all__ = ["charge_request"]


async def charge_request(admission: Admission, ctx: RequestContext) -> None:
    """Count one request of ``ctx``'s identified caller against its key's ``rpm`` (no budget, no tokens).

    Call it after ``admission.identify(ctx)``. Nothing is counted with keys off, for the master key or for a key
    without an RPM limit (``ctx.caller`` None or its ``rpm`` unset).

    Raises:
        RateLimited: the key's requests per minute are spent (429, ``retry-after`` in seconds).
        Unauthorized: the shared store says the key was revoked.
        ServiceUnavailable: the limits store is unreachable (and ``auth.fail_open`` is off).
    """
    caller = ctx.caller
    if caller is None or not caller.rpm:
        return
    ctx.caller = replace(caller, budget_usd=None, tpm=None)  # admit() then checks revocation and the RPM only
    try:
        await admission.admit(ctx)
    finally:
        ctx.caller = caller
    await admission.settle(ctx)  # releases the empty reservation, charging nothing
