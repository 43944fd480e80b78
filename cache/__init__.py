"""The response cache: exact-match and semantic, in Redis or in process, never failing a request.

Configuration (``cache:`` in the gateway YAML; every key optional)::

    cache:
      enabled: true               # false: every request bypasses the cache
      redis_url: redis://...      # or REDIS_URL; unset: the in-process LRU (max_entries)
      ttl_seconds: 3600
      only_deterministic: true    # cache only temperature 0 / top_k 1 / seeded requests
      shared_namespace: false     # true: tenants share entries (default: per team, else per key)
      timeout_ms: 200             # lookups; a slow or down Redis means a miss, never an error
      semantic_threshold: 0.9     # cosine for routes with semantic_cache: true
      semantic_runtime: auto      # onnx when onnxruntime is installed, else numpy

Per request: ``Cache-Control: no-cache`` (skip the lookup, store the fresh answer), ``no-store``, and
``x-gateway-cache-ttl: SECONDS``. Every response says ``x-gateway-cache: hit | miss | semantic-hit | bypass``
(and ``x-gateway-cache-score`` on semantic hits).

Modules: :mod:`cache.keys` (canonical keys), :mod:`cache.base` (the store protocol), :mod:`cache.memory`
and :mod:`cache.redis` (stores), :mod:`cache.semantic` (embedding and bucket search; the model in
:mod:`cache.minilm` and :mod:`cache.minilm_onnx`), :mod:`cache.assemble` (streamed chunks to a body),
:mod:`cache.service` (what the pipeline calls), :mod:`cache.factory` (built from the settings).
"""
