"""Factories for the pluggable stages, chosen from the settings; called from the app's lifespan."""

from __future__ import annotations

from gateway.config import Settings
from gateway.hooks import Admission, LogRecorder, NoCache, OpenAdmission, Recorder, ResponseCache
from gateway.metrics import Metrics


async def build_cache(settings: Settings, metrics: Metrics) -> ResponseCache:
    """The response cache the settings ask for."""
    return NoCache()


async def build_recorder(settings: Settings) -> Recorder:
    """The ledger the settings ask for."""
    return LogRecorder()


async def build_admission(settings: Settings, recorder: Recorder) -> Admission:
    """Virtual keys and limits, or open admission when keys are off."""
    return OpenAdmission()
