"""Prices, and the one cost function used by routing (predicted), accounting (charged) and the baseline.

Hosted models are priced from litellm's bundled price map (read as a JSON file: ``import litellm`` costs
seconds and is not needed for it), with per-model overrides from the config. Local models cost their share
of the GPU hour: ``gpu_hour_usd / 3600 / tokens_per_second`` per output token; prompt tokens are prefilled
in parallel and are charged at ``PREFILL_DISCOUNT`` of that.

A model's price now is :meth:`ModelPrice.now`, and a request's cost is :meth:`Price.cost` of that price: the
router calls both for its prediction, the ledger for the charge. What differs between predicted and charged
is only their inputs: the token counts (predicted from the prompt's count and ``max_tokens`` or the model's
average answer, against the upstream's ``usage``) and, for a local model, its measured throughput (when the
decision is made, against when the request finished, this request's own sample included).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

from gateway.config import ModelSpec, Settings

#: Prompt tokens of a local model cost this share of an output token's GPU time.
PREFILL_DISCOUNT = Decimal("0.1")
#: Throughput assumed for a local model before any is measured or configured.
DEFAULT_LOCAL_TPS = 1000.0
_Q: Final = Decimal("0.000000000001")  # money is kept to 1e-12 USD
#: No request uses more tokens; bounding counts keeps costs within Decimal's 28 digits at 1e-12 USD even for a
#: ``max_tokens`` of 10**30 (which predictions multiply by ``n``).
MAX_TOKENS: Final = 1_000_000_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token; ``local_tps`` set when the price derives from GPU time."""

    input_per_token: Decimal
    output_per_token: Decimal
    source: str
    max_input_tokens: int | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """Cost of one request's tokens (counts beyond :data:`MAX_TOKENS` are priced as that many)."""
        prompt_tokens = min(prompt_tokens, MAX_TOKENS)
        completion_tokens = min(completion_tokens, MAX_TOKENS)
        return (self.input_per_token * prompt_tokens + self.output_per_token * completion_tokens).quantize(_Q)


ZERO = Price(Decimal(0), Decimal(0), "unpriced")


def litellm_price_map_path() -> Path | None:
    """Where litellm's bundled price map lies, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    return path if path.exists() else None


_SPACE: Final = re.compile(r"[ \t\n\r]+")


def _skip_space(text: str, i: int) -> int:
    match = _SPACE.match(text, i)
    return i if match is None else match.end()


def _price_map_items(text: str) -> Iterator[tuple[str, Any]]:
    """The top-level ``(name, entry)`` pairs of the price map's JSON text, one at a time.

    Parsing the whole map (4,000+ entries) at once left 3.8-5.4 MiB of the server's memory behind for good,
    even after a collection and ``malloc_trim``: its small objects were spread over the interpreter's arenas,
    which free only when empty. One entry at a time, each is freed before the next is made.
    """
    decoder = json.JSONDecoder()
    i = _skip_space(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("the price map is not a JSON object")
    i = _skip_space(text, i + 1)
    while text[i : i + 1] != "}":
        name, i = decoder.raw_decode(text, i)
        i = _skip_space(text, i)
        if text[i : i + 1] != ":":
            raise ValueError(f"no ':' after {name!r} at offset {i}")
        entry, i = decoder.raw_decode(text, _skip_space(text, i + 1))
        yield name, entry
        i = _skip_space(text, i)
        if text[i : i + 1] == ",":
            i = _skip_space(text, i + 1)
        elif text[i : i + 1] != "}":
            raise ValueError(f"no ',' or '}}' after {name!r} at offset {i}")


def _aliases(upstream_model: str) -> tuple[str, ...]:
    """The map's names for a model: its own, then without a ``provider/`` prefix."""
    return (upstream_model, upstream_model.split("/", 1)[1]) if "/" in upstream_model else (upstream_model,)


#: litellm entries by model name, for the names looked up so far. The map itself (4,000+ models, ~5 MiB
#: as Python objects) is read entry by entry: only these entries stay in memory.
_ENTRIES: dict[str, dict[str, Any] | None] = {}


def load_price_entries(names: list[str]) -> None:
    """Read the price map once and keep the entries of ``names`` (call before pricing many models)."""
    missing = [n for n in names if n not in _ENTRIES]
    if not missing:
        return
    wanted = {alias for name in missing for alias in _aliases(name)}
    path = litellm_price_map_path()
    found: dict[str, Any] = {}
    if path is not None:
        found = {name: entry for name, entry in _price_map_items(path.read_text("utf-8")) if name in wanted}
    for name in missing:
        entry = next((found[a] for a in _aliases(name) if a in found), None)
        _ENTRIES[name] = entry if isinstance(entry, dict) else None


def price_map_entry(upstream_model: str) -> dict[str, Any] | None:
    """litellm's entry for a model name (with or without a ``provider/`` prefix)."""
    if upstream_model not in _ENTRIES:
        load_price_entries([upstream_model])
    return _ENTRIES[upstream_model]


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _first_price(configured: Decimal | None, mapped: Any) -> Decimal:
    if configured is not None:
        return configured
    return _dec(mapped) or Decimal(0)


def local_price(gpu_hour_usd: Decimal, tokens_per_second: float) -> Price:
    """Per-token price of a local model from its GPU's hourly cost and its throughput (to 0.1 tok/s)."""
    return _local_price(gpu_hour_usd, round(tokens_per_second, 1))


@lru_cache(maxsize=4096)
def _local_price(gpu_hour_usd: Decimal, tokens_per_second: float) -> Price:
    per_output = (gpu_hour_usd / Decimal(3600) / Decimal(str(tokens_per_second))).quantize(_Q)
    return Price((per_output * PREFILL_DISCOUNT).quantize(_Q), per_output, f"gpu_hour@{tokens_per_second:.0f}tok/s")


def static_price(spec: ModelSpec) -> Price:
    """The model's price from config overrides, else litellm's map, else (local) GPU time at the configured rate."""
    entry = price_map_entry(spec.upstream_name)
    max_input = None
    if entry is not None:
        raw = entry.get("max_input_tokens") or entry.get("max_tokens")
        max_input = int(raw) if isinstance(raw, int | float) else None
    if spec.input_cost_per_token is not None or spec.output_cost_per_token is not None:
        # One override leaves the other price the map's (a model the map does not price: 0).
        mapped = entry or {}
        return Price(
            _first_price(spec.input_cost_per_token, mapped.get("input_cost_per_token")),
            _first_price(spec.output_cost_per_token, mapped.get("output_cost_per_token")),
            "config",
            max_input,
        )
    if spec.gpu_hour_usd is not None:
        price = local_price(spec.gpu_hour_usd, spec.tokens_per_second or DEFAULT_LOCAL_TPS)
        return Price(price.input_per_token, price.output_per_token, price.source, max_input)
    if entry is not None:
        inp = _dec(entry.get("input_cost_per_token"))
        out = _dec(entry.get("output_cost_per_token"))
        if inp is not None or out is not None:
            return Price(inp or Decimal(0), out or Decimal(0), "litellm", max_input)
    return Price(Decimal(0), Decimal(0), "unpriced", max_input)


def baseline_price(spec: ModelSpec | None, name: str) -> Price | None:
    """The counterfactual price of the baseline model ``name`` (``ledger.baseline_model``): the configured
    model of that name, else litellm's price for ``name`` (so ``gpt-4`` needs no backend); None if unpriced."""
    if spec is not None:
        return static_price(spec)
    entry = price_map_entry(name)
    if entry is None:
        return None
    inp = _dec(entry.get("input_cost_per_token"))
    out = _dec(entry.get("output_cost_per_token"))
    if inp is None and out is None:
        return None
    return Price(inp or Decimal(0), out or Decimal(0), "litellm")


def baseline_problem(settings: Settings) -> str | None:
    """Why ``ledger.baseline_model`` cannot be priced (every saving would be recorded against $0, i.e. negative),
    else None. Only where litellm's price map is installed: without it the name cannot be checked."""
    name = settings.ledger.baseline_model
    spec = settings.model(name)
    price = baseline_price(spec, name)
    if spec is not None and price is not None and price.source == "unpriced":
        return (
            f"ledger.baseline_model: '{name}' is a configured model without a price, so savings would be counted "
            "against $0 (give it input_cost_per_token / output_cost_per_token, or name a priced model, e.g. gpt-4)"
        )
    if price is not None or litellm_price_map_path() is None:
        return None
    return (
        f"ledger.baseline_model: '{name}' is neither a configured model nor in litellm's price map, so savings "
        "would be counted against $0 (name a priced model, e.g. gpt-4)"
    )


def unpriced_hosted_models(settings: Settings) -> list[str]:
    """Hosted models (not ``vllm``) with no price from the config or the map: their requests cost $0, so no budget
    bounds them."""
    return [m.name for m in settings.models if not m.is_local and static_price(m).source == "unpriced"]


class Throughput(Protocol):
    """A live throughput measurement (``backends.state.Ewma``): tokens per second, None before any sample."""

    @property
    def value(self) -> float | None:
        """The measured tokens per second, or None."""
        ...


class ModelPrice:
    """How one model is priced now: its static price, or (a model priced by GPU time) the GPU hour at its
    throughput. The throughput is the measured one, never below the configured ``tokens_per_second`` (an idle
    GPU measures low: a price is what the GPU costs per token when it is busy)."""

    def __init__(self, spec: ModelSpec, throughput: Throughput | None = None) -> None:
        self.spec = spec
        self.static = static_price(spec)
        self.throughput = throughput
        self.gpu_priced = spec.gpu_hour_usd is not None and self.static.source.startswith("gpu_hour")
        self._last: tuple[float | None, Price] | None = None  # the last throughput priced, and its price

    def now(self) -> Price:
        """The price to predict or charge with at this moment."""
        if not self.gpu_priced or self.throughput is None:
            return self.static
        return self.at(self.throughput.value)

    def at(self, measured_tps: float | None) -> Price:
        """The price at a measured throughput (None: none measured yet)."""
        if not self.gpu_priced:
            return self.static
        if self._last is not None and self._last[0] == measured_tps:
            return self._last[1]  # the throughput moves with each answer, not with each decision
        gpu_hour = self.spec.gpu_hour_usd
        assert gpu_hour is not None  # gpu_priced
        floor = self.spec.tokens_per_second
        tps = measured_tps if measured_tps and (floor is None or measured_tps >= floor) else floor or DEFAULT_LOCAL_TPS
        price = local_price(gpu_hour, tps)
        self._last = (measured_tps, price)
        return price
