"""Tiny causal LMs and tokenizers built in-process from configs: no hub, no downloads.

Used by the test suite and by the embedded demo (which trains a small Llama from scratch on CPU).
"""

from __future__ import annotations

import string

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def char_tokenizer(extra_chars: str = "", vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII (plus ``extra_chars``), built without any download.

    Every printable character, newline and tab is one token, so any prompt or program round-trips exactly.
    Padding is on the left (what TRL's generation expects); ``</s>`` is the EOS token. ``vocab_size`` pads the
    vocabulary with filler tokens that decode to ``<x123>``: an output layer of a realistic size (benchmarks).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set(string.printable) | set(extra_chars))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    if vocab_size is not None and vocab_size < len(vocab):
        raise ValueError(f"vocab_size must be >= {len(vocab)} (special tokens + characters), got {vocab_size}.")
    while len(vocab) < (vocab_size or 0):
        vocab[f"<x{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)


TOOL_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def tool_chat_tokenizer(extra_chars: str = "") -> PreTrainedTokenizerFast:
    """:func:`char_tokenizer` with a tool-calling chat template: TRL's copy of Qwen2.5's (``trl/chat_templates/
    qwen2_5.jinja``, which TRL's tool loop knows how to parse: ``<tool_call>{"name": ..., "arguments": ...}
    </tool_call>``), its markers as single tokens, and ``<|im_end|>`` (the end of a turn) as the EOS token. What
    the tests and the tool demo train multi-turn tool-calling rollouts with, offline."""
    from pathlib import Path

    import trl

    tok = char_tokenizer(extra_chars)
    tok.add_special_tokens({"additional_special_tokens": list(TOOL_CHAT_TOKENS)})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    return tok


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for CPU, with its special tokens aligned to ``tokenizer`` (its vocabulary
    size is the tokenizer's). ``num_key_value_heads`` defaults to ``num_attention_heads`` (no grouped-query
    attention)."""
    import torch

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_tiny_llama(path, tokenizer: PreTrainedTokenizerFast, *, dtype=None, **llama_kwargs) -> LlamaForCausalLM:
    """:func:`tiny_llama` (``llama_kwargs``; cast to ``dtype`` if given) saved to ``path`` with ``tokenizer``: a
    checkpoint that ``from_pretrained(path)`` loads, as trainers that reload the model by path need. Returns it."""
    model = tiny_llama(tokenizer, **llama_kwargs)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


# The compact tool-calling chat template of the tool demo (`make demo-tools`): one `python` tool, every marker a single
# token, no tool description in the prompt (the SFT warm-up teaches the calls). A conversation renders as
#   <user content><a><call>5 + 3</call></s><out>8</out><a>Therefore, the answer is: 8</s>
# (`<a>` opens an assistant turn, `</s>` ends it; `<call>` holds the code of one call, `<out>` the tool's reply). It is
# prefix-preserving, marks the assistant turns (with their `</s>`) with {% generation %} for SFT's assistant-only loss,
# and COMPACT_TOOL_RESPONSE_TEMPLATE lets `tokenizer.parse_response` (TRL's tool loop) read a turn back into
# {"role": "assistant", "content": ..., "tool_calls": [{"type": "function", "function": {"name": "python",
# "arguments": {"code": ...}}}]}.
COMPACT_TOOL_TOKENS = ("<a>", "<call>", "</call>", "<out>", "</out>")
COMPACT_TOOL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "<a>{% generation %}{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- set arguments = call.function.arguments if call.function is defined else call.arguments -%}"
    "{%- set name = call.function.name if call.function is defined else call.name -%}"
    "{%- if name == 'python' and arguments is mapping and arguments.code is defined -%}"
    "<call>{{ arguments.code }}</call>"
    "{%- else -%}"
    "<call>{{ name }}{{ arguments if arguments is string else arguments | tojson }}</call>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ eos_token }}{% endgeneration %}"
    "{%- elif message.role == 'tool' -%}"
    "<out>{{ message.content }}</out>"
    "{%- else -%}"
    "{{ message.content }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<a>{%- endif -%}"
)
COMPACT_TOOL_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<a>",
    "fields": {
        "tool_calls": {
            "open": "<call>",
            "close": "</call>",
            "repeats": True,
            "content": "text",
            "transform": {"type": "function", "function": {"name": "python", "arguments": {"code": "{content}"}}},
        },
        "content": {"close_pattern": r"</s>", "content": "text"},
    },
}


def add_compact_tool_template(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Give ``tokenizer`` (EOS ``</s>``) the compact ``python``-tool chat template and its response template (see
    ``COMPACT_TOOL_CHAT_TEMPLATE``): the markers become single special tokens. Returns the same tokenizer."""
    if tokenizer.eos_token != "</s>":
        raise ValueError(
            f"add_compact_tool_template: the template ends turns with '</s>', the EOS is {tokenizer.eos_token!r}."
        )
    tokenizer.add_special_tokens({"additional_special_tokens": list(COMPACT_TOOL_TOKENS)})
    tokenizer.chat_template = COMPACT_TOOL_CHAT_TEMPLATE
    tokenizer.response_template = COMPACT_TOOL_RESPONSE_TEMPLATE
    return tokenizer
