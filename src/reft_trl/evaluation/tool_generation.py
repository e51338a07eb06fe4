"""Greedy multi-turn generation with tools, for evaluating a tool-calling policy outside TRL's training loop.

:func:`generate_with_tools` does what TRL's ``GRPOTrainer._tool_call_loop`` does at rollout time, greedily and with
``model.generate``: render each conversational prompt with the chat template (generation prompt added), generate a
turn, read it back with ``tokenizer.parse_response`` (the tokenizer's ``response_template``), and while the turn calls
tools, run them, append the tool messages' tokens (the chat template's tool suffix, as TRL computes it) and generate
the next turn. Token ids are concatenated, never re-tokenized, so the model sees exactly what it saw in training. Like
TRL, ``max_new_tokens`` bounds the whole completion, tool-result tokens included: a tool result that would not fit
ends the conversation where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def tool_suffix_ids(tokenizer, tool_messages: list[dict[str, Any]]) -> list[int]:
    """The tokens the chat template puts after an assistant turn that called tools: the ``tool_messages`` and the next
    generation prompt (TRL's ``_get_tool_suffix_ids``: a dummy conversation rendered with and without them, the
    shorter cut after its last EOS)."""
    call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    prefix = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(
        dummy + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    eos = [i for i, t in enumerate(prefix) if t == tokenizer.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    if full[: len(prefix)] != prefix:
        raise ValueError("tool_suffix_ids: the chat template is not prefix-preserving around tool messages.")
    return full[len(prefix) :]


def _call_tools(message: dict, tools: dict[str, Callable]) -> list[dict[str, Any]]:
    replies = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        name = function.get("name", "unknown")
        try:
            if name not in tools:
                raise ValueError(f"Tool {name} not found.")
            result = tools[name](**(function.get("arguments") or {}))
        except Exception as err:  # what TRL's tool loop does: the error goes back to the model
            result = {"error": str(err)}
        replies.append({"role": "tool", "name": name, "content": str(result)})
    return replies


@torch.no_grad()
def generate_with_tools(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, Any]]],
    tools: Sequence[Callable],
    *,
    max_new_tokens: int = 256,
    max_tool_calling_iterations: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generating with tools",
) -> list[list[dict[str, Any]]]:
    """Greedy tool-calling conversations: for each conversational prompt, the completion's messages (assistant turns
    and tool replies, in order). See the module docstring."""
    from trl.chat_template_utils import parse_response

    by_name = {tool.__name__: tool for tool in tools}
    contexts = [
        list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
        for p in prompts
    ]
    prompt_lengths = [len(c) for c in contexts]
    completions: list[list[dict[str, Any]]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    iterations = 0
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="conversation")
    try:
        while active:
            budgets = {i: max_new_tokens - (len(contexts[i]) - prompt_lengths[i]) for i in active}
            turns: dict[int, list[int]] = {}
            order = sorted(active, key=lambda i: len(contexts[i]))
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                width = max(len(contexts[i]) for i in index)
                input_ids = torch.tensor([[pad] * (width - len(contexts[i])) + contexts[i] for i in index])
                attention = torch.tensor([[0] * (width - len(contexts[i])) + [1] * len(contexts[i]) for i in index])
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max(budgets[i] for i in index),
                    do_sample=False,
                    temperature=None,
                    top_k=None,
                    top_p=None,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
                for row, i in enumerate(index):
                    new = output[row, width:].tolist()
                    if tokenizer.eos_token_id in new:
                        new = new[: new.index(tokenizer.eos_token_id) + 1]
                    turns[i] = [t for t in new if t != pad][: budgets[i]]
            still = []
            for i in active:
                message = parse_response(tokenizer, turns[i], prefix=contexts[i]) if turns[i] else {}
                contexts[i] += turns[i]
                if message:
                    completions[i].append(message)
                calls_allowed = max_tool_calling_iterations is None or iterations < max_tool_calling_iterations
                if message.get("tool_calls") and calls_allowed:
                    replies = _call_tools(message, by_name)
                    suffix = tool_suffix_ids(tokenizer, replies)
                    if len(contexts[i]) + len(suffix) - prompt_lengths[i] < max_new_tokens:
                        completions[i] += replies
                        contexts[i] += suffix
                        still.append(i)
                        continue
                bar.update(1)
            active = still
            iterations += 1
    finally:
        bar.close()
        if was_training:
            model.train()
    return completions


__all__ = ["generate_with_tools", "tool_suffix_ids"]
