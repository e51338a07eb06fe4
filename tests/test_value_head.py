"""The shared-trunk value head: capture, alignment, fused LM head, gradient checkpointing. Where it is saved and how it
is loaded: tests/test_value_model.py."""

from __future__ import annotations

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from reft_trl.models import MissingValueHeadError, add_value_head, capture_values
from reft_trl.models.tiny import char_tokenizer, tiny_llama


@pytest.fixture()
def tok():
    return char_tokenizer()


@pytest.fixture()
def model(tok):
    m = add_value_head(tiny_llama(tok), init_std=0.5, seed=0)
    m.eval()
    return m


def _inputs(tok, texts=("Question: 1+1?", "Q: 7*6")):
    batch = tok(list(texts), return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def _direct_values(model, input_ids, attention_mask):
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.v_head(hidden).squeeze(-1)


def test_one_forward_gives_logits_and_values(model, tok):
    input_ids, attention_mask = _inputs(tok)
    with capture_values(model) as captured:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    assert out.logits.shape[:2] == input_ids.shape
    assert len(captured) == 1
    torch.testing.assert_close(captured[0], _direct_values(model, input_ids, attention_mask))


def test_no_capture_outside_the_context_and_nested_capture_is_refused(model, tok):
    input_ids, attention_mask = _inputs(tok)
    with capture_values(model) as captured:
        pass
    model(input_ids=input_ids, attention_mask=attention_mask)
    assert captured == []
    with capture_values(model), pytest.raises(RuntimeError, match="already active"), capture_values(model):
        pass


def test_values_come_with_trls_fused_lm_head(model, tok):
    """TRL >= 1.15 swaps the forward for a fused LM head (no logits, no hidden states): the hook still sees them."""
    input_ids, attention_mask = _inputs(tok)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    with capture_values(model) as captured:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    assert out.log_probs.shape == (2, input_ids.size(1) - 1)
    torch.testing.assert_close(captured[0], _direct_values(model, input_ids, attention_mask))


def test_value_loss_backpropagates_into_the_shared_trunk(model, tok):
    input_ids, attention_mask = _inputs(tok)
    with capture_values(model) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask)
    captured[0].sum().backward()
    assert model.v_head.weight.grad is not None
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_fresh_head_is_zero_initialised_by_default(tok):
    m = add_value_head(tiny_llama(tok))
    assert torch.all(m.v_head.weight == 0) and torch.all(m.v_head.bias == 0)
    input_ids, attention_mask = _inputs(tok)
    with capture_values(m) as captured:
        m(input_ids=input_ids, attention_mask=attention_mask)
    assert torch.all(captured[0] == 0)


def test_gradient_checkpointing_keeps_values_and_gradients(tok):
    def grads(checkpointing):
        m = add_value_head(tiny_llama(tok, seed=3), init_std=0.5, seed=1)
        m.train()
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        input_ids, attention_mask = _inputs(tok)
        with capture_values(m) as captured:
            m(input_ids=input_ids, attention_mask=attention_mask)
        captured[0].sum().backward()
        return captured[0].detach(), m.model.layers[0].self_attn.q_proj.weight.grad

    values_plain, grad_plain = grads(False)
    values_ckpt, grad_ckpt = grads(True)
    torch.testing.assert_close(values_ckpt, values_plain)
    torch.testing.assert_close(grad_ckpt, grad_plain)


def test_capture_without_a_head_is_a_clear_error(tok):
    with pytest.raises(MissingValueHeadError, match="add_value_head"), capture_values(tiny_llama(tok)):
        pass
