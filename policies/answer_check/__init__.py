"""The cascade's answer check: does the local model's answer fall short, so the request should escalate?

:class:`AnswerCheck` scores an answer from its text (refusals, moralising, disclaimers, hedges, degenerate or
truncated output, length against what the prompt asks), the model's token log-probabilities when it returned
them, and the prompt router's score; :mod:`policies.answer_check.verifier` builds and reads an optional judge
call. Serving needs only the stdlib; :mod:`policies.answer_check.fit` (numpy) refits the shipped artifact.
"""

from policies.answer_check.model import AnswerCheck, Verdict

__all__ = ["AnswerCheck", "Verdict"]
