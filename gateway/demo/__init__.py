"""``gateway demo``: the whole gateway on one machine with nothing else installed.

Simulated backends (:mod:`gateway.demo.sims`), a realistic workload (:mod:`gateway.demo.workload`) driven
through the real HTTP endpoint (:mod:`gateway.demo.drive`), and a report read back from the ledger
(:mod:`gateway.demo.report`); :mod:`gateway.demo.run` puts them together.
"""
