"""Where the value function is saved (value_model/ beside a plain policy), how it is loaded back, the layouts of
earlier versions (reft-trl <= 0.1: inside the policy's files; TRL <= 0.11: ``v_head.summary.*``), export, and the
vLLM-style checks of a folder (reft_trl.models.serving)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import assert_deployable
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, LlamaForCausalLM

from reft_trl.models import (
    MissingValueHeadError,
    SeparateCritic,
    add_value_head,
    capture_values,
    export,
    load_causal_lm,
    load_model_with_value_head,
    load_value_model,
    save_value_model,
    saved_value_model,
    value_head_state_dict,
)
from reft_trl.models.__main__ import main as models_cli
from reft_trl.models.critic import attach_critic, critic_of
from reft_trl.models.serving import adapter_problems, servable_problems, vllm_weight_files
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.models.value_model import is_value_param, split_value_params


@pytest.fixture()
def tok():
    return char_tokenizer()


@pytest.fixture()
def model(tok):
    return add_value_head(tiny_llama(tok), init_std=0.5, seed=0).eval()


def _inputs(tok, texts=("Question: 1+1?", "Q: 7*6")):
    batch = tok(list(texts), return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def _values(model, tok):
    input_ids, attention_mask = _inputs(tok)
    with torch.no_grad(), capture_values(model) as captured:
        model.eval()(input_ids=input_ids, attention_mask=attention_mask)
    return captured[0]


def save_split(model, folder, tok=None):
    """What ReFTTrainer.save_model writes: the policy's parameters with save_pretrained, the rest in value_model/."""
    policy, value = split_value_params(model.state_dict())
    model.save_pretrained(folder, state_dict=policy)
    if tok is not None:
        tok.save_pretrained(folder)
    critic = critic_of(model).backbone if any("critic" in k for k in value) else None
    save_value_model(folder, value, critic_backbone=critic)


def _with_critic(tok, seed=5):
    policy = tiny_llama(tok, seed=1)
    critic = SeparateCritic(tiny_llama(tok, seed=seed).model)
    torch.nn.init.normal_(critic.v_head.weight, std=0.5)
    return attach_critic(policy, critic)


# ----------------------------------------------------------------------------------------------- this layout
def test_the_head_is_saved_beside_a_plain_policy_and_loads_back_exactly(model, tok, tmp_path):
    save_split(model, tmp_path, tok)
    assert sorted(p.name for p in (tmp_path / "value_model").iterdir()) == ["value_head.safetensors"]
    head = load_file(tmp_path / "value_model" / "value_head.safetensors")
    assert head["weight"].shape == (1, 32) and head["bias"].shape == (1,)
    assert_deployable(tmp_path, value_model="shared")
    loaded = load_model_with_value_head(tmp_path)
    for key, value in value_head_state_dict(model).items():
        assert torch.equal(value_head_state_dict(loaded)[key], value)
    torch.testing.assert_close(_values(loaded, tok), _values(model, tok), atol=0, rtol=0)


def test_a_separate_critic_is_saved_as_an_automodel_folder_and_loads_back_exactly(tok, tmp_path):
    policy = _with_critic(tok)
    save_split(policy, tmp_path)
    assert saved_value_model(tmp_path) == "separate"
    assert_deployable(tmp_path, value_model="separate")
    trunk, info = AutoModel.from_pretrained(tmp_path / "value_model", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {} and type(trunk).__name__ == "LlamaModel"
    other = _with_critic(tok, seed=9)
    assert load_value_model(other, tmp_path) == "separate"
    for (name, saved), (_, loaded) in zip(
        critic_of(policy).state_dict().items(), critic_of(other).state_dict().items()
    ):
        assert torch.equal(saved, loaded), name
    # a model of the other kind is refused with what the folder holds
    with pytest.raises(ValueError, match="holds a separate critic; this model has none"):
        load_value_model(tiny_llama(tok), tmp_path)
    head_folder = tmp_path / "head"
    save_split(add_value_head(tiny_llama(tok), init_std=0.1, seed=1), head_folder)
    with pytest.raises(ValueError, match="holds a value head; this model has a separate critic"):
        load_value_model(_with_critic(tok), head_folder)


def test_a_folder_without_a_value_function_is_a_clear_error(tok, tmp_path):
    tiny_llama(tok).save_pretrained(tmp_path)
    assert saved_value_model(tmp_path) is None
    with pytest.raises(MissingValueHeadError, match="No value function .* looks like a base or SFT model"):
        load_model_with_value_head(tmp_path)
    fresh = load_model_with_value_head(tmp_path, require_value_head=False)
    assert torch.all(fresh.v_head.weight == 0)
    assert load_value_model(tiny_llama(tok), tmp_path, strict=False) is None


def test_saving_again_replaces_the_value_function_of_an_earlier_save(model, tok, tmp_path):
    save_split(_with_critic(tok), tmp_path)
    save_split(model, tmp_path)
    assert saved_value_model(tmp_path) == "shared"
    assert sorted(p.name for p in (tmp_path / "value_model").iterdir()) == ["value_head.safetensors"]
    save_value_model(tmp_path, {})  # a critic-free run saving into the same folder: no stale head left behind
    assert saved_value_model(tmp_path) is None and not (tmp_path / "value_model").exists()


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
    with torch.no_grad():
        logits = m(input_ids=input_ids, attention_mask=attention_mask).logits
    save_split(m, tmp_path)
    assert_deployable(tmp_path, value_model="shared")
    loaded = load_model_with_value_head(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids, attention_mask=attention_mask).logits, logits)
    torch.testing.assert_close(_values(loaded, tok), _values(m, tok))


# -------------------------------------------------------------------------- reft-trl <= 0.1: inside the policy
def test_an_earlier_reft_folder_loads_without_a_report_and_exports_to_a_plain_one(model, tok, tmp_path, caplog):
    """reft-trl <= 0.1 saved v_head.* in model.safetensors: transformers reports it as UNEXPECTED (and vLLM refuses
    it); it still loads with its head, and export rewrites it as a plain folder + value_model/."""
    old, new = tmp_path / "old", tmp_path / "new"
    model.save_pretrained(old)  # the earlier layout: the head inside model.safetensors
    tok.save_pretrained(old)
    assert any("v_head" in p for p in servable_problems(old))
    caplog.clear()
    AutoModelForCausalLM.from_pretrained(old)
    assert "v_head.weight" in caplog.text  # the report this layout caused
    caplog.clear()
    plain, with_head = load_causal_lm(old), load_model_with_value_head(old)
    assert "LOAD REPORT" not in caplog.text
    assert type(plain) is LlamaForCausalLM and not hasattr(plain, "v_head")
    torch.testing.assert_close(with_head.v_head.weight, model.v_head.weight)

    assert models_cli(["export", str(old), str(new)]) == 0
    assert_deployable(new, value_model="shared")
    assert (new / "tokenizer.json").is_file()
    policy = load_file(old / "model.safetensors")
    exported = load_file(new / "model.safetensors")
    assert set(exported) == {k for k in policy if not k.startswith("v_head")}
    assert all(torch.equal(exported[k], policy[k]) for k in exported)
    torch.testing.assert_close(_values(load_model_with_value_head(new), tok), _values(model, tok), atol=0, rtol=0)


def test_a_sharded_earlier_folder_exports_shard_by_shard(model, tok, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    model.save_pretrained(old, max_shard_size="20KB")
    shards = sorted(p.name for p in old.glob("*.safetensors"))
    assert len(shards) > 2
    export(old, new)
    assert sorted(p.name for p in new.glob("*.safetensors")) == [
        s for s in shards if any(not k.startswith("v_head") for k in load_file(old / s))
    ]
    index = json.loads((new / "model.safetensors.index.json").read_text())
    assert not any("v_head" in k for k in index["weight_map"])
    assert_deployable(new, value_model="shared")
    assert torch.equal(load_model_with_value_head(new).v_head.weight, model.v_head.weight)


def test_an_earlier_separate_critic_exports_as_its_own_folder(tok, tmp_path):
    policy = _with_critic(tok)
    old, new = tmp_path / "old", tmp_path / "new"
    policy.save_pretrained(old)  # critic.backbone.* and critic.v_head.* inside model.safetensors
    assert saved_value_model(old) == "separate"
    export(old, new)
    assert_deployable(new, value_model="separate")
    other = _with_critic(tok, seed=11)
    load_value_model(other, new)
    assert all(
        torch.equal(a, b)
        for a, b in zip(critic_of(policy).state_dict().values(), critic_of(other).state_dict().values())
    )


def test_export_refuses_what_it_cannot_write_faithfully_and_leaves_nothing(tok, tmp_path):
    """A critic whose trunk is not the policy's (started from another model) has no config in the earlier layout;
    export refuses it and leaves neither the destination nor a temporary folder."""
    policy = tiny_llama(tok, seed=1)
    attach_critic(policy, SeparateCritic(tiny_llama(tok, hidden_size=16, seed=2).model))
    old = tmp_path / "old"
    policy.save_pretrained(old)
    with pytest.raises(ValueError, match="not the policy's trunk"):
        export(old, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    with pytest.raises(FileExistsError):
        export(old, old)
    tiny_llama(tok).save_pretrained(tmp_path / "plain")
    export(tmp_path / "plain", tmp_path / "deeper" / "new")  # a destination whose parent does not exist yet
    assert_deployable(tmp_path / "deeper" / "new")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no weight files"):
        export(tmp_path / "empty", tmp_path / "out")


def test_an_earlier_peft_adapter_with_the_head_in_modules_to_save_loads_and_exports(model, tok, tmp_path):
    """reft-trl <= 0.1 trained the head as a PEFT modules_to_save module, so the adapter held v_head (vLLM: 'is
    unsupported LoRA weight', and modules_to_save=['v_head'] is refused)."""
    base_dir, adapter_dir, new = tmp_path / "base", tmp_path / "adapter", tmp_path / "new"
    tiny_llama(tok).save_pretrained(base_dir)
    base = add_value_head(LlamaForCausalLM.from_pretrained(base_dir), init_std=0.3, seed=4)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["v_head"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(adapter_dir)
    trained = value_head_state_dict(peft_model)
    assert adapter_problems(adapter_dir)  # what vLLM refuses

    reloaded = load_model_with_value_head(adapter_dir)
    assert isinstance(reloaded, PeftModel) and not hasattr(reloaded.base_model.model.v_head, "modules_to_save")
    assert torch.equal(value_head_state_dict(reloaded)["weight"], trained["weight"])

    export(adapter_dir, new)
    assert json.loads((new / "adapter_config.json").read_text())["modules_to_save"] is None
    merged = assert_deployable(new, value_model="shared", base_model=str(base_dir))
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    again = load_model_with_value_head(new)
    assert torch.equal(value_head_state_dict(again)["weight"], trained["weight"])
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in lora.items())
    assert not hasattr(merged, "v_head")


# ------------------------------------------------------------ checkpoints of old TRL's AutoModelForCausalLMWithValueHead
def _old_trl_head(tok, seed=7):
    """The head as old TRL's ValueHead held it (``v_head.summary = Linear(hidden, 1)``), with non-zero weights."""
    generator = torch.Generator().manual_seed(seed)
    hidden = tiny_llama(tok).config.hidden_size
    return {
        "v_head.summary.weight": torch.randn(1, hidden, generator=generator),
        "v_head.summary.bias": torch.randn(1, generator=generator),
    }


def test_old_trl_full_checkpoint_loads_with_its_value_head_and_exports(tok, tmp_path, capfd):
    """AutoModelForCausalLMWithValueHead.save_pretrained wrote the LM's state dict plus ``v_head.summary.*`` into the
    model's own weight file (``pretrained_model.save_pretrained(state_dict=...)``)."""
    lm, head = tiny_llama(tok, seed=1), _old_trl_head(tok)
    lm.save_pretrained(tmp_path / "old", state_dict={**lm.state_dict(), **head})
    loaded = load_model_with_value_head(tmp_path / "old")
    torch.testing.assert_close(loaded.v_head.weight, head["v_head.summary.weight"])
    torch.testing.assert_close(loaded.v_head.bias, head["v_head.summary.bias"])
    torch.testing.assert_close(loaded.lm_head.weight, lm.lm_head.weight)
    hidden = lm.eval().model(*_inputs(tok)).last_hidden_state
    expected = (hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]).squeeze(-1).detach()
    torch.testing.assert_close(_values(loaded, tok), expected)
    assert "summary" not in capfd.readouterr().err  # no LOAD REPORT about the head's keys

    export(tmp_path / "old", tmp_path / "new")
    assert_deployable(tmp_path / "new", value_model="shared")
    torch.testing.assert_close(_values(load_model_with_value_head(tmp_path / "new"), tok), expected)


def test_old_trl_peft_checkpoint_loads_its_head_from_pytorch_model_bin_and_exports(tok, tmp_path):
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

    export(adapter_dir, tmp_path / "new")
    assert not (tmp_path / "new" / "pytorch_model.bin").exists()
    assert_deployable(tmp_path / "new", value_model="shared", base_model=str(base_dir))
    again = load_model_with_value_head(tmp_path / "new")
    torch.testing.assert_close(value_head_state_dict(again)["weight"], head["v_head.summary.weight"])

    (adapter_dir / "pytorch_model.bin").unlink()  # an old PEFT checkpoint saved without its head
    with pytest.raises(MissingValueHeadError, match="No value function"):
        load_model_with_value_head(adapter_dir)
    fresh = load_model_with_value_head(adapter_dir, require_value_head=False)
    assert torch.all(value_head_state_dict(fresh)["weight"] == 0)


# ----------------------------------------------------------------------------- what vLLM checks (emulated here)
def test_vllm_reads_every_top_level_safetensors_file_and_no_subfolder(tok, tmp_path):
    plain = tiny_llama(tok)
    plain.save_pretrained(tmp_path)
    assert servable_problems(tmp_path) == []
    save_file({"weight": torch.zeros(1, 32)}, str(tmp_path / "value_model.safetensors"))  # top level: read
    problems = servable_problems(tmp_path)
    assert len(problems) == 1 and "'weight'" in problems[0] and "value_model.safetensors" in problems[0]
    os.makedirs(tmp_path / "sub")
    os.replace(tmp_path / "value_model.safetensors", tmp_path / "sub" / "value_model.safetensors")  # not read
    assert servable_problems(tmp_path) == []


def test_vllm_filters_shards_by_the_index_and_needs_every_parameter(tok, tmp_path):
    tiny_llama(tok).save_pretrained(tmp_path, max_shard_size="20KB")
    save_file({"v_head.weight": torch.zeros(1, 32)}, str(tmp_path / "stray.safetensors"))  # not in the index
    assert "stray.safetensors" not in {p.name for p in vllm_weight_files(tmp_path)}
    assert servable_problems(tmp_path) == []
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    dropped = sorted(k for k, f in index["weight_map"].items() if f == shard)
    (tmp_path / shard).rename(tmp_path / "gone.tmp")
    with pytest.raises(FileNotFoundError, match="missing"):
        servable_problems(tmp_path)
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if f != shard}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (problem,) = servable_problems(tmp_path)
    assert "not initialized" in problem and dropped[0] in problem


def test_vllm_accepts_a_tied_lm_head_saved_once_and_bin_files_without_training_state(tok, tmp_path):
    tiny_llama(tok, tie_word_embeddings=True).save_pretrained(tmp_path / "tied")
    assert servable_problems(tmp_path / "tied") == []
    untied = tiny_llama(tok)
    state = {k: v for k, v in untied.state_dict().items() if k != "lm_head.weight"}
    untied.save_pretrained(tmp_path / "untied", state_dict=state)
    assert any("lm_head.weight" in p for p in servable_problems(tmp_path / "untied"))
    untied.config.save_pretrained(tmp_path / "bin")
    torch.save(untied.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    torch.save({"lr": 1.0}, tmp_path / "bin" / "training_args.bin")
    assert [p.name for p in vllm_weight_files(tmp_path / "bin")] == ["pytorch_model.bin"]
    assert servable_problems(tmp_path / "bin") == []


def test_vllm_lora_rules(tok, tmp_path):
    base = tiny_llama(tok)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    assert adapter_problems(tmp_path / "lora") == []
    base = add_value_head(tiny_llama(tok))
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["v_head"])).save_pretrained(
        tmp_path / "with_head"
    )
    problems = adapter_problems(tmp_path / "with_head")
    assert any("modules_to_save=['v_head']" in p for p in problems)
    assert any("base_model.model.v_head" in p and "unsupported LoRA weight" in p for p in problems)


def test_the_check_command_says_which_folders_vllm_would_refuse(model, tok, tmp_path, capsys):
    model.save_pretrained(tmp_path / "old")
    save_split(model, tmp_path / "new")
    assert models_cli(["check", str(tmp_path / "new")]) == 0
    assert models_cli(["check", str(tmp_path / "new"), str(tmp_path / "old")]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'new'}: OK" in out and "would NOT load in vLLM" in out and "v_head" in out
