"""The demo's workload: a deterministic, realistic mix of what an LLM gateway sees in a day.

Each request belongs to a *kind* with its own prompt shape, route and parameters:

* ``chat``: short everyday questions on the ``auto`` route (half of them streamed);
* ``faq``: a handful of support questions asked again and again with ``temperature: 0``, so the cache
  answers the repeats;
* ``summarize``: long documents to condense, on the ``cheap`` route;
* ``code``: programming tasks on ``auto``, mostly streamed;
* ``reasoning``: hard multi-step questions on the ``best`` route;
* ``tools``: an agent that sends function definitions (only GPT-4 supports tools here);
* ``pinned``: clients that hard-code a model name.

The same seed always gives the same requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: (kind, share of the traffic)
MIX: tuple[tuple[str, float], ...] = (
    ("chat", 0.28),
    ("faq", 0.22),
    ("summarize", 0.14),
    ("code", 0.14),
    ("reasoning", 0.10),
    ("tools", 0.06),
    ("pinned", 0.06),
)

_CHAT = (
    "What's a good name for a grey cat?",
    "How long should I boil an egg for a runny yolk?",
    "Give me three ideas for a rainy Sunday afternoon.",
    "Translate 'where is the train station' into Spanish.",
    "What is the capital of Australia?",
    "Write a two-line birthday message for a colleague.",
    "Suggest a title for a blog post about houseplants.",
    "How many cups are in a litre?",
    "Recommend a podcast about history.",
    "What does 'ubiquitous' mean?",
)
_FAQ = (
    "How do I reset my password?",
    "What are your support hours?",
    "How can I change the email address on my account?",
    "Do you offer refunds on annual plans?",
    "How do I export my data as CSV?",
    "Where can I download my invoices?",
)
_CODE = (
    "Write a Python function that merges two sorted lists in linear time, with tests.",
    "Explain the difference between a process and a thread, with a Go example.",
    "Refactor this JavaScript callback chain into async/await: fs.readFile(a, (e, x) => fs.writeFile(b, x, cb)).",
    "Write a SQL query returning the top 3 customers by revenue per month.",
    "Implement an LRU cache in TypeScript with O(1) get and put.",
    'Why does this Rust code not compile: let s = String::new(); let r = &s; drop(s); println!("{}", r);',
)
_REASONING = (
    "Prove that there are infinitely many primes, then explain where the proof would fail for primes of the form 4k+3.",
    "A bat and a ball cost $1.10 in total; the bat costs $1.00 more than the ball. Reason step by step, then "
    "generalise the trap behind the puzzle.",
    "Compare the trade-offs of Raft and Paxos for a geo-distributed database, and recommend one for a "
    "5-region deployment.",
    "Derive the closed form of the sum of the first n cubes and prove it by induction.",
    "Design a rate limiter for a multi-tenant API handling 50k requests per second; analyse its failure modes.",
)
_TOPICS = (
    "quarterly results",
    "the new office policy",
    "a customer incident",
    "the product roadmap",
    "a research paper",
)
_SENTENCES = (
    "Revenue grew in every region except the north, where a supply problem delayed two large orders.",
    "The team shipped the migration ahead of schedule, although the rollback plan was never tested.",
    "Customers asked repeatedly for an export feature, and support tickets about it doubled.",
    "The incident began with a configuration change that disabled retries for the payment service.",
    "Hiring slowed in the second half, which pushed two projects into the next quarter.",
    "Energy costs fell by a tenth after the data centre moved to the new cooling system.",
    "Survey results suggest that most users open the app on mobile during their commute.",
    "A competitor cut prices by fifteen percent, but churn stayed flat over the period.",
)
_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}


@dataclass(frozen=True, slots=True)
class DemoRequest:
    """One request of the workload: its kind and the chat completion body to send."""

    kind: str
    body: dict[str, Any] = field(hash=False)

    @property
    def stream(self) -> bool:
        """Whether the body asks for a streamed answer."""
        return bool(self.body.get("stream"))


def _chat(
    rng: random.Random,
    model: str,
    text: str,
    *,
    max_tokens: int,
    stream: bool,
    temperature: float,
    user: str,
    system: str | None = None,
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "user": user,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _document(rng: random.Random) -> str:
    paragraphs = []
    for _ in range(rng.randint(6, 14)):
        paragraphs.append(" ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(4, 8))))
    return "\n\n".join(paragraphs)


def make_request(kind: str, rng: random.Random) -> DemoRequest:
    """One request of ``kind`` (see the module docstring)."""
    user = f"user-{rng.randint(1, 12):02d}"
    if kind == "chat":
        body = _chat(
            rng,
            "auto",
            rng.choice(_CHAT),
            max_tokens=rng.choice((48, 64, 96)),
            stream=rng.random() < 0.5,
            temperature=0.7,
            user=user,
        )
    elif kind == "faq":
        body = _chat(
            rng,
            "auto",
            rng.choice(_FAQ),
            max_tokens=80,
            stream=rng.random() < 0.3,
            temperature=0,
            user=user,
            system="You are the support assistant of Acme Cloud. Answer briefly.",
        )
    elif kind == "summarize":
        text = f"Summarise this report on {rng.choice(_TOPICS)} in five bullet points:\n\n{_document(rng)}"
        body = _chat(rng, "cheap", text, max_tokens=120, stream=False, temperature=0.3, user=user)
    elif kind == "code":
        body = _chat(
            rng,
            "auto",
            rng.choice(_CODE),
            max_tokens=rng.choice((128, 160, 200)),
            stream=rng.random() < 0.7,
            temperature=0.2,
            user=user,
            system="You are a senior software engineer. Answer with code and a short explanation.",
        )
    elif kind == "reasoning":
        body = _chat(
            rng, "best", rng.choice(_REASONING), max_tokens=160, stream=rng.random() < 0.5, temperature=0.5, user=user
        )
    elif kind == "tools":
        city = rng.choice(("Paris", "Lagos", "Osaka", "Lima", "Oslo"))
        body = _chat(
            rng,
            "auto",
            f"Should I take an umbrella in {city} today?",
            max_tokens=64,
            stream=False,
            temperature=0.2,
            user=user,
        )
        body["tools"] = [_WEATHER_TOOL]
    elif kind == "pinned":
        model = rng.choice(("gpt-4", "gpt-4", "llama-2-7b"))
        body = _chat(
            rng, model, rng.choice(_CHAT), max_tokens=64, stream=rng.random() < 0.5, temperature=0.7, user=user
        )
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    return DemoRequest(kind, body)


def build_workload(n: int, seed: int = 0) -> list[DemoRequest]:
    """``n`` requests drawn from :data:`MIX` (deterministic for a given ``seed``)."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    return [make_request(rng.choices(kinds, weights)[0], rng) for _ in range(n)]
