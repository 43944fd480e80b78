"""Build the tiny, randomly initialised Llama model that the real vLLM test server serves.

Run it with the vLLM venv's interpreter (it needs torch, tokenizers and transformers, which the
gateway's own venv does not have)::

    $GATEWAY_VLLM_VENV/bin/python tests/integration/vllm_model.py DIR

The result is deterministic (fixed seeds, generated training text) and is skipped when ``DIR`` already
holds a completed build of the same version (the marker file :data:`MARKER`). Building takes a few
seconds: a byte-level BPE tokenizer (vocab ~2048) trained on generated text, wrapped in a
``PreTrainedTokenizerFast`` with a Jinja chat template, and a random ``LlamaForCausalLM`` (hidden 128,
intermediate 256, 2 layers, 4 heads, 2 KV heads, 4096 positions: ~0.8M parameters).

This module imports nothing heavy at import time, so pytest may import it to read the constants.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

#: Bump when anything below changes: a directory with another version is rebuilt.
MODEL_VERSION = "1"
MARKER = ".llm-gateway-model-complete"
SEED = 1234
VOCAB_SIZE = 2048
MAX_POSITIONS = 4096

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a an of to in and or is are was be it that this with for on as by at from model request "
    "gateway route cost latency token tokens stream server client cache queue backend hosted local "
    "price quality fast slow cheap answer question hello world please thanks user system assistant "
    "python code function return value error retry timeout budget policy metric prometheus vllm "
    "llama prompt completion chat message content role json yes no one two three four five six "
    "seven eight nine ten hundred thousand what why how when where who which can could would should"
).split()
_PUNCT = (".", ",", "?", "!", ":", ";", "", "", "", "")


def is_built(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a completed build of this :data:`MODEL_VERSION`."""
    marker = Path(directory) / MARKER
    try:
        return marker.read_text().strip() == MODEL_VERSION
    except OSError:
        return False


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Generated English-ish text with digits, punctuation, code and a little non-ASCII."""
    extra = ["café", "naïve", "über", "日本語", "emoji 🙂", '{"key": 1}', "def f(x):", "x = [1, 2, 3]"]
    out: list[str] = []
    for _ in range(lines):
        words: list[str] = []
        for _ in range(rng.randint(4, 24)):
            roll = rng.random()
            if roll < 0.08:
                words.append(str(rng.randint(0, 100_000)))
            elif roll < 0.11:
                words.append(rng.choice(extra))
            else:
                word = rng.choice(_WORDS)
                words.append(word.capitalize() if rng.random() < 0.1 else word)
            words[-1] += rng.choice(_PUNCT)
        out.append(" ".join(words))
    return out


def build(directory: str | os.PathLike[str]) -> Path:
    """Build the model into ``directory`` unless already built; return the directory."""
    target = Path(directory).resolve()
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(target):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _build_into(tmp)
            (tmp / MARKER).write_text(MODEL_VERSION + "\n")
            tmp.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_into(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(SEED)
    torch.manual_seed(SEED)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT_DIR", file=sys.stderr)
        return 2
    if is_built(argv[1]):
        print(f"already built: {argv[1]}")
        return 0
    path = build(argv[1])
    print(f"built: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
