"""The response cache: exact-match and semantic, in Redis or in process, never failing a request.

Configuration (``cache:`` in the gateway YAML; every key optional)::

    cache:
      enabled: true               # false: every request bypasses the cache
      redis_url: redis://...      # or REDIS_URL; unset: the in-process LRU (max_entries)
      ttl_seconds: 3600
      max_entries: 10000          # the in-process LRU's bounds: entries, and their size in all
      max_bytes: 268435456
      max_entry_bytes: 1048576    # larger answers are not stored (gateway_cache_errors{op="too_large"})
      only_deterministic: true    # cache only temperature 0 / top_k 1 / seeded requests (embeddings: always)
      shared_namespace: false     # true: tenants share entries (default: per team, else per key)
      team_namespace: true        # the keys of one team share entries (false: each key its own)
      timeout_ms: 200             # lookups; a slow or down Redis means a miss, never an error
      semantic_threshold: 0.89    # cosine for routes with semantic_cache: true (a route may set its own)
      semantic_verifier: true     # second-stage checks on the candidate (cache/verify.py)
      semantic_floor: 0.75        # candidates below are neither served nor explored
      semantic_check_rate: 0.05   # share of semantic hits queued for a judge (cache/judge.py)
      semantic_explore_rate: 0.25 # share of unserved candidates queued for a judge
      semantic_max_bucket: 10000  # rows kept per bucket (a Redis stream)
      semantic_index_max_vectors: 100000  # bucket indexes kept in process memory, in total
      semantic_runtime: auto      # onnx-int8 when onnxruntime is installed, else numpy

    routes:
      faq: {semantic_cache: true, semantic_max_error: 0.02}  # serve only what checked outcomes support

Whose answers a request may be served: its tenant's. A key's tenant is its team when it has one (the team's
keys read each other's cached answers, exact and semantic, as they give feedback on each other's requests;
``team_namespace: false`` gives each key its own), else the key itself; with keys off, every caller is one tenant.

Chat and text completions are cached exactly and, on routes that ask for it, semantically; embeddings
exactly (the same model, input, ``encoding_format`` and ``dimensions``, per tenant; the key holds the upstream
model behind the name, so pointing a name at another model starts afresh), since a vector is a function of
its input.

Per request: ``Cache-Control: no-cache`` (skip the lookup, store the fresh answer), ``no-store``, and
``x-gateway-cache-ttl: SECONDS``. Every response says ``x-gateway-cache: hit | miss | semantic-hit | bypass``
(and ``x-gateway-cache-score`` on semantic hits, whose ``x-gateway-reason`` and request-log line say the
similarity, the threshold in force and the verifier's verdict).

Modules: :mod:`cache.keys` (canonical keys), :mod:`cache.base` (the store protocol), :mod:`cache.memory`
and :mod:`cache.redis` (stores), :mod:`cache.semantic` (embedding off the event loop; the model in
:mod:`cache.minilm` and :mod:`cache.minilm_onnx`), :mod:`cache.index` (the per-bucket vector index),
:mod:`cache.verify` (the second-stage verifier), :mod:`cache.learn` (outcomes, false-hit rates, error
bounds), :mod:`cache.judge` (the judge's prompt and the check loop), :mod:`cache.assemble` (streamed
chunks to a body), :mod:`cache.service` (what the pipeline calls), :mod:`cache.factory` (built from the
settings). ``docs/semantic-cache.md`` explains the semantic cache as a whole.
"""
