"""Batched sampling with transformers ``generate`` (vLLM: :class:`reft_trl.evaluation.samplers.VLLMSampler`).

``generate_completions`` takes TRL-format prompts (plain strings, or conversational message lists rendered with the
tokenizer's chat template) and returns, for each prompt, ``num_samples`` decoded completions. Greedy decoding is
``do_sample=False``; the paper's sampling is ``temperature=1.0, top_k=0, top_p=1.0``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, Any]]


def render_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[str]:
    """Plain prompts as they are; conversational ones through the chat template with a generation prompt."""
    rendered = []
    for prompt in prompts:
        if isinstance(prompt, str):
            rendered.append(prompt)
        else:
            rendered.append(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return rendered


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    num_samples: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[list[str]]:
    """Sample ``num_samples`` completions per prompt with ``model.generate`` (left padding, batched).

    Returns one list of ``num_samples`` strings per prompt, in the prompts' order. Prompts are batched by length to
    waste less padding. Special tokens (EOS, padding) are stripped from the decoded text.
    """
    if num_samples > 1 and not do_sample:
        raise ValueError(
            "num_samples > 1 needs do_sample=True (greedy decoding gives the same completion every time)."
        )
    texts = render_prompts(tokenizer, prompts)
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = model.generation_config.eos_token_id
    eos = [tokenizer.eos_token_id] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    if not do_sample:
        sampling = {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[list[str] | None] = [None] * len(texts)
    device = next(model.parameters()).device
    try:
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            index = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos,
                **sampling,
            )
            completions = tokenizer.batch_decode(output[:, encoded["input_ids"].size(1) :], skip_special_tokens=True)
            for j, i in enumerate(index):
                results[i] = completions[j * num_samples : (j + 1) * num_samples]
    finally:
        tokenizer.padding_side = padding_side
        if was_training:
            model.train()
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    return results  # type: ignore[return-value]
