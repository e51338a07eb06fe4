"""The shared-trunk value head: capture, alignment, fused LM head, save/load, PEFT, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from reft_trl.models import (
    MissingValueHeadError,
    add_value_head,
    capture_values,
    load_model_with_value_head,
    load_value_head,
    value_head_state_dict,
)
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.models.value_head import is_value_param


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


def test_save_pretrained_round_trips_the_head_exactly(model, tok, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = load_model_with_value_head(tmp_path)
    for key, value in value_head_state_dict(model).items():
        assert torch.equal(value_head_state_dict(loaded)[key], value)
    input_ids, attention_mask = _inputs(tok)
    loaded.eval()
    with capture_values(loaded) as captured:
        loaded(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(captured[0], _direct_values(model, input_ids, attention_mask))


def test_loading_a_checkpoint_without_a_head_is_a_clear_error(tok, tmp_path):
    tiny_llama(tok).save_pretrained(tmp_path)
    with pytest.raises(MissingValueHeadError, match="No value head .* looks like a base or SFT model"):
        load_model_with_value_head(tmp_path)
    fresh = load_model_with_value_head(tmp_path, require_value_head=False)
    assert torch.all(fresh.v_head.weight == 0)
    assert load_value_head(tiny_llama(tok), tmp_path, strict=False) is False


def test_peft_lora_keeps_the_head_trainable_and_saves_it(model, tok, tmp_path):
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    model.config._name_or_path = model.name_or_path = str(base_dir)  # what from_pretrained would have set
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["v_head"])
    peft_model = get_peft_model(model, config)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("v_head" in n for n in trainable)
    assert not any("mlp" in n for n in trainable)

    # Train the head a little so that the saved copy differs from the base checkpoint's.
    initial = value_head_state_dict(peft_model)["weight"]
    input_ids, attention_mask = _inputs(tok)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    with capture_values(peft_model) as captured:
        peft_model(input_ids=input_ids, attention_mask=attention_mask)
    captured[0].sum().backward()
    optimizer.step()
    trained = value_head_state_dict(peft_model)
    assert not torch.equal(trained["weight"], initial)

    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    reloaded = load_model_with_value_head(adapter_dir)
    assert isinstance(reloaded, PeftModel)
    torch.testing.assert_close(value_head_state_dict(reloaded)["weight"], trained["weight"])
    base_head = load_model_with_value_head(base_dir)
    assert not torch.equal(value_head_state_dict(base_head)["weight"], trained["weight"])


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


@pytest.mark.parametrize(
    ("name", "excluded"),
    [
        ("v_head.weight", True),
        ("base_model.model.v_head.modules_to_save.default.bias", True),
        ("critic.backbone.layers.0.mlp.up_proj.weight", True),
        ("model.layers.0.self_attn.v_proj.weight", False),
        ("lm_head.weight", False),
    ],
)
def test_value_parameters_are_recognised_by_name(name, excluded):
    assert is_value_param(name) is excluded


def test_tied_embeddings_survive_the_head_and_a_save_load_round_trip(tok, tmp_path):
    """The demo model and many hub models (Qwen2.5-0.5B) tie the LM head to the input embedding."""
    m = add_value_head(tiny_llama(tok, tie_word_embeddings=True), init_std=0.5, seed=0).eval()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    input_ids, attention_mask = _inputs(tok)
    with torch.no_grad(), capture_values(m) as captured:
        logits = m(input_ids=input_ids, attention_mask=attention_mask).logits
    m.save_pretrained(tmp_path)
    loaded = load_model_with_value_head(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad(), capture_values(loaded) as captured_again:
        torch.testing.assert_close(loaded(input_ids=input_ids, attention_mask=attention_mask).logits, logits)
    torch.testing.assert_close(captured_again[0], captured[0])


def test_loading_a_reft_checkpoint_does_not_report_its_value_head_as_unexpected(model, tok, tmp_path, caplog):
    """transformers prints a LOAD REPORT listing `v_head.*` as UNEXPECTED when a ReFT checkpoint is loaded as a plain
    causal LM; load_causal_lm (evaluation) and load_model_with_value_head expect the head, and other unexpected keys
    are still reported."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from reft_trl.models import load_causal_lm

    model.save_pretrained(tmp_path / "reft")
    caplog.clear()
    AutoModelForCausalLM.from_pretrained(tmp_path / "reft")
    assert "v_head.weight" in caplog.text  # the false alarm this guards against
    caplog.clear()

    plain = load_causal_lm(tmp_path / "reft")
    with_head = load_model_with_value_head(tmp_path / "reft")
    assert "LOAD REPORT" not in caplog.text
    assert type(plain) is LlamaForCausalLM and not hasattr(plain, "v_head")  # the real class, head not loaded
    torch.testing.assert_close(with_head.v_head.weight, model.v_head.weight)
    reloaded = load_causal_lm(tmp_path / "reft")
    reloaded.save_pretrained(tmp_path / "again")
    assert LlamaForCausalLM.from_pretrained(tmp_path / "again").config.architectures == ["LlamaForCausalLM"]

    weights = load_file(tmp_path / "reft" / "model.safetensors")
    save_file({**weights, "stray.weight": torch.zeros(1)}, tmp_path / "reft" / "model.safetensors")
    caplog.clear()
    load_causal_lm(tmp_path / "reft")
    err = caplog.text
    assert "LOAD REPORT" in err and "stray.weight" in err and "v_head" not in err


# ------------------------------------------------------------ checkpoints of old TRL's AutoModelForCausalLMWithValueHead
def _old_trl_head(tok, seed=7):
    """The head as old TRL's ValueHead held it (``v_head.summary = Linear(hidden, 1)``), with non-zero weights."""
    generator = torch.Generator().manual_seed(seed)
    hidden = tiny_llama(tok).config.hidden_size
    return {
        "v_head.summary.weight": torch.randn(1, hidden, generator=generator),
        "v_head.summary.bias": torch.randn(1, generator=generator),
    }


def test_old_trl_full_checkpoint_loads_with_its_value_head(tok, tmp_path, capfd):
    """AutoModelForCausalLMWithValueHead.save_pretrained wrote the LM's state dict plus ``v_head.summary.*`` into the
    model's own weight file (``pretrained_model.save_pretrained(state_dict=...)``)."""
    lm, head = tiny_llama(tok, seed=1), _old_trl_head(tok)
    lm.save_pretrained(tmp_path, state_dict={**lm.state_dict(), **head})
    loaded = load_model_with_value_head(tmp_path)
    torch.testing.assert_close(loaded.v_head.weight, head["v_head.summary.weight"])
    torch.testing.assert_close(loaded.v_head.bias, head["v_head.summary.bias"])
    torch.testing.assert_close(loaded.lm_head.weight, lm.lm_head.weight)
    input_ids, attention_mask = _inputs(tok)
    loaded.eval()
    with torch.no_grad(), capture_values(loaded) as captured:
        loaded(input_ids=input_ids, attention_mask=attention_mask)
    hidden = lm.eval().model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    expected = hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]
    torch.testing.assert_close(captured[0], expected.squeeze(-1).detach())
    assert "summary" not in capfd.readouterr().err  # no LOAD REPORT about the head's keys


def test_old_trl_peft_checkpoint_loads_its_head_from_pytorch_model_bin(tok, tmp_path):
    """For a PEFT model old TRL saved the adapter as PEFT does and the head alone to ``pytorch_model.bin``."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base = tiny_llama(tok, seed=2)
    base.save_pretrained(base_dir)
    base.config._name_or_path = base.name_or_path = str(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter_dir)
    head = _old_trl_head(tok, seed=3)
    torch.save(head, adapter_dir / "pytorch_model.bin")

    loaded = load_model_with_value_head(adapter_dir)
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(value_head_state_dict(loaded)["weight"], head["v_head.summary.weight"])
    torch.testing.assert_close(value_head_state_dict(loaded)["bias"], head["v_head.summary.bias"])
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    reloaded = dict(loaded.named_parameters())
    assert lora and all(torch.equal(p, reloaded[n]) for n, p in lora.items())  # the adapter came back too

    (adapter_dir / "pytorch_model.bin").unlink()  # an old PEFT checkpoint saved without its head
    with pytest.raises(MissingValueHeadError, match="saved no value head"):
        load_model_with_value_head(adapter_dir)
    assert torch.all(
        value_head_state_dict(load_model_with_value_head(adapter_dir, require_value_head=False))["weight"] == 0
    )
