"""Learned quality router: predicts, from the prompt alone, how much the strong model is needed.

See :class:`policies.router.model.QualityRouter` (inference, numpy only) and
:mod:`policies.router.train` (training, ``gateway router train``).
"""

from policies.router.model import QualityRouter

__all__ = ["QualityRouter"]
