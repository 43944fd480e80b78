"""Learned quality router: predicts, from the prompt alone, how much the strong model is needed.

See :class:`policies.router.model.QualityRouter` (inference, standard library only),
:mod:`policies.router.loader` (loading a prior or an adapted artifact), :mod:`policies.router.adapt` (adapting to
a deployment's labels, numpy) and :mod:`policies.router.train` (training, ``gateway router train``).
"""

from policies.router.model import QualityRouter

__all__ = ["QualityRouter"]
