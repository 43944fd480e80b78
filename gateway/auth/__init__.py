"""Virtual API keys and the limits that act on them (rate limits, budgets).

* :mod:`gateway.auth.keys`: key generation, hashing and the ``gw_api_keys`` table.
* :mod:`gateway.auth.limits`: RPM/TPM token buckets and budget reservations, atomic in Redis (Lua) or
  in process with the same semantics.
* :mod:`gateway.auth.admission`: :class:`KeyAdmission`, the pipeline's :class:`~gateway.hooks.Admission`.
"""

from gateway.auth.admission import KeyAdmission, build_key_admission
from gateway.auth.keys import KEY_PREFIX, KeyRecord, KeyStore, generate_key, hash_key

__all__ = ["KEY_PREFIX", "KeyAdmission", "KeyRecord", "KeyStore", "build_key_admission", "generate_key", "hash_key"]
