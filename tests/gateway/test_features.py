"""Request features: the routing prompt, its token ids (which the learned router reads) and the token count."""

from __future__ import annotations

from gateway.features import extract_features
from gateway.tokens import ApproxCounter, load_tiktoken


def test_single_message_ids_are_the_prompts_and_count_it() -> None:
    counter = load_tiktoken()
    text = "Solve 3x + 7 = 22 and explain each step."
    feats = extract_features("chat", {"messages": [{"role": "user", "content": text}]}, counter)
    assert feats.prompt == text
    assert feats.prompt_ids == counter.encode(text)
    assert feats.prompt_tokens == len(counter.encode(text)) + 4 + 3  # OpenAI's per-message and reply overheads


def test_conversation_routes_on_the_last_user_message_and_counts_everything() -> None:
    counter = load_tiktoken()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "And times three?"}]},
    ]
    feats = extract_features("chat", {"messages": messages}, counter)
    assert feats.prompt == "And times three?"
    assert feats.prompt_ids == counter.encode("And times three?")
    rest = counter.count("You are terse.\nWhat is 2 + 2?\n4")
    assert feats.prompt_tokens == len(feats.prompt_ids) + rest + 4 * len(messages) + 3


def test_no_user_message_routes_on_the_last_text() -> None:
    counter = load_tiktoken()
    messages = [{"role": "system", "content": "Summarise the news."}]
    feats = extract_features("chat", {"messages": messages}, counter)
    assert feats.prompt == "Summarise the news." and feats.prompt_ids == counter.encode("Summarise the news.")


def test_completions_prompts() -> None:
    counter = load_tiktoken()
    one = extract_features("completions", {"prompt": "Once upon a time"}, counter)
    assert one.prompt_ids == counter.encode("Once upon a time") and one.prompt_tokens == len(one.prompt_ids)
    batch = extract_features("completions", {"prompt": ["a much longer first prompt than the last", "hi"]}, counter)
    assert batch.prompt == "hi" and batch.prompt_ids == counter.encode("hi")
    assert batch.prompt_tokens == counter.count("a much longer first prompt than the last")
    ids = extract_features("completions", {"prompt": [[1, 2, 3], [4]]}, counter)
    assert ids.prompt == "" and ids.prompt_ids is None and ids.prompt_tokens == 3


def test_without_a_tokenizer_there_are_no_ids() -> None:
    feats = extract_features("chat", {"messages": [{"role": "user", "content": "x" * 40}]}, ApproxCounter())
    assert feats.prompt_ids is None and feats.prompt_tokens == 10 + 4 + 3


def test_capabilities() -> None:
    counter = load_tiktoken()
    body = {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
    }
    feats = extract_features("chat", body, counter)
    assert feats.needs_vision and feats.needs_tools and feats.needs_json
    assert not extract_features("chat", {**body, "tool_choice": "none"}, counter).needs_tools


def test_the_deprecated_functions_need_tools_too() -> None:
    """``functions``/``function_call`` (older SDKs and agents): routed like ``tools``, so never to a model without
    tool calling; their schemas count towards the prompt."""
    counter = load_tiktoken()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    functions = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    plain = extract_features("chat", {"messages": messages}, counter)
    feats = extract_features("chat", {"messages": messages, "functions": functions}, counter)
    assert feats.needs_tools and feats.prompt_tokens > plain.prompt_tokens
    off = {"messages": messages, "functions": functions, "function_call": "none"}
    assert not extract_features("chat", off, counter).needs_tools


def test_every_prompt_and_input_is_billed() -> None:
    """A batch's longest prompt decides the context window, and all its prompts are billed (the estimate a client
    who hangs up, or a call that times out, is charged); an embeddings request's inputs are counted (they counted
    0, so hanging up made embeddings free)."""
    counter = load_tiktoken()
    one = "word " * 50
    batch = extract_features("completions", {"prompt": [one] * 8}, counter)
    single = extract_features("completions", {"prompt": one}, counter)
    assert batch.prompt_tokens == single.prompt_tokens
    assert batch.billed_prompt_tokens == 8 * single.billed_prompt_tokens
    ids = extract_features("completions", {"prompt": [[1, 2, 3], [4, 5]]}, counter)
    assert (ids.prompt_tokens, ids.billed_prompt_tokens) == (3, 5)
    embed = extract_features("embeddings", {"input": [one] * 4}, counter)
    assert embed.billed_prompt_tokens == 4 * counter.count(one) > 0
    assert extract_features("embeddings", {"input": one}, counter).billed_prompt_tokens == counter.count(one)
