"""ReFTTrainer on tiny in-process models: config, rollout wiring, PPO epochs, PEFT, chat, resume, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_deployable, cpu_trainer_settings
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from trl import GRPOTrainer

from reft_trl import core
from reft_trl.models.serving import exclude_value_params_from_vllm_sync
from reft_trl.models.value_head import has_value_head, value_head_state_dict
from reft_trl.models.value_model import saved_parameter_names
from reft_trl.trainers import ReFTConfig, ReFTTrainer


def prompts_dataset(n=16, conversational=False):
    questions = [f"{i} + {i % 5} = ?" for i in range(n)]
    prompt = (
        [[{"role": "user", "content": q}] for q in questions] if conversational else [f"Q: {q}\nA:" for q in questions]
    )
    return Dataset.from_dict({"prompt": prompt, "answer": [str(i + i % 5) for i in range(n)]})


class RecordingReward:
    """A deterministic reward that remembers what TRL passed it (scores depend on the completion's text)."""

    __name__ = "recording_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [1.0 if a in t else (0.1 if any(ch.isdigit() for ch in t) else 0.0) for t, a in zip(texts, answer)]
        self.calls.append(
            {
                "prompts": prompts,
                "completions": completions,
                "completion_ids": kwargs.get("completion_ids"),
                "answer": answer,
                "scores": scores,
            }
        )
        return scores


def make_config(tmp_path, **overrides):
    return ReFTConfig(
        **cpu_trainer_settings(tmp_path / "out", **{"max_completion_length": 10, "seed": 0, **overrides})
    )


def make_trainer(tiny_checkpoint, tmp_path, reward=None, dataset=None, **config):
    return ReFTTrainer(
        model=tiny_checkpoint,
        reward_funcs=reward or RecordingReward(),
        args=make_config(tmp_path, **config),
        train_dataset=dataset or prompts_dataset(),
    )


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------------- config
def test_config_defaults_reproduce_the_paper(tmp_path):
    c = ReFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert c.num_generations == 1 and type(c.num_generations) is int
    assert (c.temperature, c.top_k, c.top_p) == (1.0, 0, 1.0)
    assert c.num_iterations == c.num_ppo_epochs == 2
    assert c.epsilon == c.cliprange == 0.2 and c.cliprange_value == 0.2
    assert c.vf_coef == 5.0 and (c.gamma, c.lam) == (1.0, 0.95)
    assert c.beta == c.kl_coef == 0.05 and c.kl_estimator == "k1"
    assert c.advantage_whitening == "global" and c.partial_reward == 0.1
    assert c.disable_dropout and c.lr_scheduler_type == "constant"


def test_ppo_config_names_are_aliases(tmp_path):
    c = ReFTConfig(
        output_dir=str(tmp_path),
        kl_coef=0.01,
        cliprange=0.1,
        num_ppo_epochs=3,
        response_length=64,
        num_mini_batches=2,
        gradient_accumulation_steps=2,
        report_to="none",
        use_cpu=True,
    )
    assert (c.beta, c.epsilon, c.num_iterations, c.max_completion_length) == (0.01, 0.1, 3, 64)
    assert c.steps_per_generation == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kl_coef": 0.01, "beta": 0.02}, "kl_coef=0.01 and beta=0.02"),
        ({"cliprange": 0.1, "epsilon": 0.3}, "cliprange=0.1 and epsilon=0.3"),
        ({"num_mini_batches": 2, "steps_per_generation": 3}, "steps_per_generation=2"),
        ({"kl_estimator": "k7"}, "kl_estimator='k7'"),
        ({"advantage_whitening": "batch"}, "advantage_whitening='batch'"),
        ({"value_model": "twin"}, "value_model='twin'"),
        ({"num_generations": 0}, "num_generations must be >= 1"),
    ],
)
def test_contradictory_or_invalid_settings_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_trainer_requires_a_reft_config(tiny_checkpoint):
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="needs a ReFTConfig"):
        ReFTTrainer(
            model=tiny_checkpoint,
            reward_funcs=RecordingReward(),
            args=GRPOConfig("x", num_generations=2, use_cpu=True, bf16=False, report_to="none"),
        )


# ---------------------------------------------------------------------------------------------------- training
def test_two_steps_update_policy_and_value_head_and_log_metrics(tiny_checkpoint, tmp_path):
    reward = RecordingReward()
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward=reward)
    assert has_value_head(trainer.model)
    assert torch.all(value_head_state_dict(trainer.model)["weight"] == 0)  # fresh head from an SFT-style checkpoint
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert {"v_head.weight", "v_head.bias"} <= changed
    assert any(n.startswith("model.layers") for n in changed) and "lm_head.weight" in changed

    # One rollout of 4 questions (one sample each), reused for 2 PPO epochs = 2 optimizer steps.
    assert len(reward.calls) == 1 and len(reward.calls[0]["completions"]) == 4
    logs = {k for entry in trainer.state.log_history for k in entry}
    expected = {
        "objective/scores",
        "objective/kl",
        "objective/non_score_reward",
        "loss/policy",
        "loss/value",
        "entropy",
        "policy/clipfrac",
        "value/clipfrac",
        "value/explained_variance",
        "completions/mean_length",
        "completions/clipped_ratio",
    }
    assert expected <= logs
    assert "frac_reward_zero_std" not in logs
    first = trainer.state.log_history[0]
    assert first["objective/scores"] == pytest.approx(sum(reward.calls[0]["scores"]) / 4)
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before any update


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_non_score_reward_is_the_kl_penalty_paid_in_the_reward(tiny_checkpoint, tmp_path, estimator):
    """objective/kl is the k1 estimate; objective/non_score_reward is -kl_coef x the summed penalty of the configured
    estimator (what the reward paid, as TRL 1.12 logged it), and rlhf_reward = scores + non_score_reward."""
    trainer = make_trainer(tiny_checkpoint, tmp_path, kl_estimator=estimator, kl_coef=0.1)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.7], [-0.3, -2.5, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([1.0, 0.1])
    trainer._metrics["train"].clear()
    trainer._log_rollout_metrics("train", scores, old, ref, None, None, mask)
    metrics = trainer._metrics["train"]
    log_ratio = old - ref
    k1 = (log_ratio * mask).sum(-1).mean().item()
    paid = {"k1": log_ratio, "k3": torch.exp(-log_ratio) - 1 + log_ratio}[estimator]
    non_score = -0.1 * (paid * mask).sum(-1).mean().item()
    assert metrics["objective/kl"][-1] == pytest.approx(k1)
    assert metrics["objective/non_score_reward"][-1] == pytest.approx(non_score)
    assert metrics["objective/rlhf_reward"][-1] == pytest.approx(0.55 + non_score)
    assert (estimator == "k1") == (non_score == pytest.approx(-0.1 * k1))


def _count_policy_forwards(monkeypatch, trainer):
    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, model, *args, **kwargs):
        calls.append(model is not self.ref_model)
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    return calls


@pytest.mark.parametrize("gradient_accumulation_steps", [1, 2])
def test_rollout_gives_old_logprobs_and_values_from_a_single_policy_forward(
    tiny_checkpoint, tmp_path, monkeypatch, gradient_accumulation_steps
):
    """GA=1: TRL runs its own old-logprob forward and the values are captured in it; GA=2 with 1 PPO epoch: TRL skips
    it and ReFT runs one. Either way: exactly one no-grad policy forward, and its values are the head's."""
    trainer = make_trainer(
        tiny_checkpoint,
        tmp_path,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_ppo_epochs=1 if gradient_accumulation_steps == 2 else 2,
        per_device_train_batch_size=2,
    )
    trainer.model.v_head.weight.data.normal_(0, 0.5)  # non-zero values, so the comparison means something
    calls = _count_policy_forwards(monkeypatch, trainer)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(list(trainer.train_dataset.select(range(4))))
    assert calls.count(True) == 1 and calls.count(False) == 1  # one policy forward, one reference forward

    model = trainer.model
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = model.v_head(hidden).squeeze(-1)[:, -batch["completion_ids"].size(1) - 1 : -1]
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"].bool()
    T = batch["completion_ids"].size(1)
    torch.testing.assert_close(batch["old_values"][mask], values[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch["old_per_token_logps"][mask], logps[:, -T:][mask], atol=1e-4, rtol=1e-4)


def test_value_capture_from_another_forward_than_old_logprobs_fails_loudly(tiny_checkpoint, tmp_path, monkeypatch):
    """ReFT captures the values in TRL's no-grad policy forward. If a TRL release ran another forward first (e.g. the
    reference, which under PEFT is the same module) or changed when it runs one, training must stop."""
    trainer = make_trainer(tiny_checkpoint, tmp_path, gradient_accumulation_steps=1)  # TRL runs the old-logp forward
    trainer.model.train()
    rows = list(trainer.train_dataset.select(range(4)))
    original = GRPOTrainer._generate_and_score_completions

    def capture_in_an_extra_forward_first(self, inputs):
        # an extra policy forward before TRL's: the capture happens there, not in the forward TRL returns
        batch = original(self, inputs)
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        self._capture.armed = True  # record this extra forward instead of TRL's
        self._get_per_token_logps_and_entropies(self.model, ids, mask, batch["completion_ids"].size(1))
        return batch

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", capture_in_an_extra_forward_first)
    with pytest.raises(RuntimeError, match="wrong values"):
        trainer._generate_and_score_completions(rows)
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", original)
    trainer._generate_and_score_completions(rows)  # unpatched: fine
    # TRL's rule for running the old-logprob forward changed: the mirror disagrees with what TRL did
    monkeypatch.setattr(type(trainer), "_trl_computes_old_logps", lambda self: False)
    with pytest.raises(RuntimeError, match="expected TRL not to run a no-grad policy forward"):
        trainer._generate_and_score_completions(rows)


def test_ppo_and_online_st_are_siblings_on_one_rollout_base():
    from reft_trl.trainers import OnlineSTTrainer, RolloutTrainer

    assert ReFTTrainer.__bases__ == (RolloutTrainer,) and OnlineSTTrainer.__bases__ == (RolloutTrainer,)
    assert not issubclass(OnlineSTTrainer, ReFTTrainer)
    assert "_prepare_inputs" not in vars(ReFTTrainer) and "_prepare_inputs" in vars(RolloutTrainer)


def test_rollout_advantages_are_kl_shaped_gae_whitened(tiny_checkpoint, tmp_path):
    reward = RecordingReward()
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward=reward, kl_coef=0.3, num_ppo_epochs=1)
    # Make the policy differ from the reference so the KL term is non-zero.
    with torch.no_grad():
        trainer.model.lm_head.weight.add_(0.3 * torch.randn_like(trainer.model.lm_head.weight))
        trainer.model.v_head.weight.normal_(0, 0.5)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(list(trainer.train_dataset.select(range(4))))
    mask = batch["completion_mask"].float()
    scores = torch.tensor(reward.calls[-1]["scores"])
    torch.testing.assert_close(batch["scores"], scores)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        logits = trainer.ref_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    T = batch["completion_ids"].size(1)
    ref = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)[:, -T:]
    rewards = core.token_rewards(scores, batch["old_per_token_logps"], ref, mask, 0.3)
    advantages, returns = core.gae(rewards, batch["old_values"], mask, 1.0, 0.95)
    torch.testing.assert_close(batch["returns"], returns, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch["advantages"], core.masked_whiten(advantages, mask), atol=1e-4, rtol=1e-4)
    kl = trainer._metrics["train"]["objective/kl"][-1]
    assert kl != 0


def test_each_ppo_epoch_reshuffles_the_mini_batches(tiny_checkpoint, tmp_path):
    """8 completions, 4 mini-batches of 2, 2 PPO epochs: both epochs see the same 8 rows, grouped differently."""
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, per_device_train_batch_size=2, num_mini_batches=4, num_ppo_epochs=2, max_steps=8
    )
    minibatches = []
    original = trainer._compute_loss

    def recording(model, inputs):
        rows = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1).tolist()
        minibatches.append(frozenset(tuple(r) for r in rows))
        return original(model, inputs)

    trainer._compute_loss = recording
    trainer.train()
    assert len(minibatches) == 8
    first_epoch, second_epoch = set(minibatches[:4]), set(minibatches[4:])
    assert frozenset().union(*first_epoch) == frozenset().union(*second_epoch)
    assert len(frozenset().union(*first_epoch)) == 8
    assert first_epoch != second_epoch


def test_peft_trains_adapter_and_value_head_with_adapter_disabled_reference(tiny_checkpoint, tmp_path):
    trainer = ReFTTrainer(
        model=tiny_checkpoint,
        reward_funcs=RecordingReward(),
        args=make_config(tmp_path, kl_coef=0.1, save_strategy="steps", save_steps=2),
        train_dataset=prompts_dataset(),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.ref_model is None  # the reference is the adapter-disabled policy: no second copy
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("v_head" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert not any("mlp" in n for n in trainable)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert any("v_head" in n for n in changed) and any("lora_" in n for n in changed)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    # the adapter holds the LoRA weights only; the trained head is beside it, in value_model/
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert_deployable(checkpoint, value_model="shared", base_model=tiny_checkpoint)
    assert not any("v_head" in n for n in saved_parameter_names(checkpoint))
    saved = load_file(checkpoint / "value_model" / "value_head.safetensors")
    head = value_head_state_dict(trainer.model)
    assert torch.equal(saved["weight"], head["weight"]) and torch.equal(saved["bias"], head["bias"])


def test_conversational_prompts(tiny_checkpoint, tmp_path):
    reward = RecordingReward()
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward=reward, dataset=prompts_dataset(conversational=True))
    trainer.train()
    completions = reward.calls[0]["completions"]
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
    assert "loss/value" in trainer.state.log_history[0]


def test_separate_critic_ablation_trains_its_own_trunk(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, value_model="separate")
    assert not hasattr(trainer.model, "v_head") and hasattr(trainer.model, "critic")
    critic_params = sum(p.numel() for p in trainer.model.critic.parameters())
    assert critic_params > 0.5 * sum(p.numel() for p in trainer.model.model.parameters())
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert {"critic.v_head.weight"} <= changed
    assert any(n.startswith("critic.backbone.layers") for n in changed)
    assert any(n.startswith("model.layers") for n in changed)


# ---------------------------------------------------------------------------------------------------- failures
class InfReward(RecordingReward):
    def __call__(self, prompts, completions, answer, **kwargs):
        return [float("inf")] * len(completions)


def test_non_finite_reward_stops_with_the_step_and_prompt(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward=InfReward())
    with pytest.raises(FloatingPointError, match=r"Non-finite reward at step 0: .*recording_reward.*Q: "):
        trainer.train()


def test_non_finite_loss_stops_before_any_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_checkpoint, tmp_path, max_steps=4, save_strategy="steps", save_steps=1)
    original = core.value_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(core, "value_loss", poisoned)
    with pytest.raises(FloatingPointError, match="Non-finite PPO loss at step 2"):
        trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    from safetensors.torch import load_file

    for name in checkpoints:
        weights = load_file(tmp_path / "out" / name / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_checkpoint_with_non_finite_weights_is_refused(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path)
    with torch.no_grad():
        trainer.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"refusing to write a corrupted checkpoint"):
        trainer._save_checkpoint(trainer.model, None)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------------------ resume
VALUE_FUNCTIONS = {
    "shared": {},
    "separate": {"value_model": "separate"},
    "lora": {"peft_config": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)},
}


def _make(tiny_checkpoint, out, variant, model=None, **config):
    kwargs = dict(VALUE_FUNCTIONS[variant])
    peft_config = kwargs.pop("peft_config", None)
    return ReFTTrainer(
        model=model or tiny_checkpoint,
        reward_funcs=RecordingReward(),
        args=make_config(out, **kwargs, **config),
        train_dataset=prompts_dataset(),
        peft_config=peft_config,
    )


@pytest.mark.parametrize("variant", list(VALUE_FUNCTIONS))
def test_resume_from_checkpoint_ends_with_the_same_weights(tiny_checkpoint, tmp_path, variant):
    """Checkpoints at every step, mid-rollout included (2 PPO epochs per rollout): resuming from step 1 or 3 ends with
    exactly the weights (policy, value head or critic, LoRA) of the uninterrupted run; the value function comes back
    from value_model/, which the policy's files do not hold."""
    settings = dict(max_steps=4, save_strategy="steps", save_steps=1, num_ppo_epochs=2)
    full = _make(tiny_checkpoint, tmp_path / "full", variant, **settings)
    full.train()
    expected = snapshot(full.model)
    for resume_step in (1, 3):
        resumed = _make(tiny_checkpoint, tmp_path / f"resumed{resume_step}", variant, **settings)
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / f"checkpoint-{resume_step}"))
        got = snapshot(resumed.model)
        assert set(got) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=f"{name} after resuming at {resume_step}")


def test_pushing_a_checkpoint_takes_its_value_function_along(tiny_checkpoint, tmp_path, monkeypatch):
    """With push_to_hub, transformers copies the checkpoint's top-level model files into output_dir and uploads it:
    value_model/ must follow, or output_dir (and the hub repo) would pair a new policy with an old head."""
    from transformers import Trainer

    trainer = _make(tiny_checkpoint, tmp_path, "shared", max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    stale = tmp_path / "out" / "value_model"
    stale.mkdir(parents=True)
    (stale / "value_head.safetensors").write_bytes(b"an older step's head")
    pushed = []
    monkeypatch.setattr(Trainer, "_push_from_checkpoint", lambda self, folder: pushed.append(folder))
    checkpoint = tmp_path / "out" / "checkpoint-1"

    class Running:  # the previous push is still uploading: transformers copies nothing now, neither do we
        def is_done(self):
            return False

    trainer.push_in_progress = Running()
    trainer._push_from_checkpoint(str(checkpoint))
    assert (stale / "value_head.safetensors").read_bytes() == b"an older step's head"
    trainer.push_in_progress = None
    pushed.clear()
    trainer._push_from_checkpoint(str(checkpoint))
    assert pushed == [str(checkpoint)]
    copied = (stale / "value_head.safetensors").read_bytes()
    assert copied == (checkpoint / "value_model" / "value_head.safetensors").read_bytes()


def test_an_adapter_folder_continues_as_it_is_and_takes_no_new_peft_config(tiny_checkpoint, tmp_path):
    trainer = _make(tiny_checkpoint, tmp_path, "lora", max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    with pytest.raises(ValueError, match="is a PEFT adapter folder.*takes no peft_config"):
        _make(tiny_checkpoint, tmp_path / "again", "lora", model=str(tmp_path / "adapter"))


def _greedy(model, tokenizer, prompts):
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.eval().generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].size(1) :].tolist()


@pytest.mark.parametrize("variant", list(VALUE_FUNCTIONS))
def test_every_model_folder_a_run_writes_is_deployable_and_continues_training(tiny_checkpoint, tmp_path, variant):
    """Each checkpoint-N and the save_model folder load as a plain causal LM (or LoRA adapter) the way vLLM and
    transformers check them, generate exactly what the trained policy generates, and keep the value function in
    value_model/; ReFTTrainer(model=<final folder>) restores that value function exactly (training continues from
    the trained critic, not a fresh one)."""
    from transformers import AutoTokenizer

    trainer = _make(tiny_checkpoint, tmp_path, variant, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    final = tmp_path / "final"
    trainer.save_model(str(final))
    kind = "separate" if variant == "separate" else "shared"
    for folder in (tmp_path / "out" / "checkpoint-1", tmp_path / "out" / "checkpoint-2", final):
        assert_deployable(folder, value_model=kind, base_model=tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompts = ["Q: 3 + 4 = ?\nA:", "Q: 12 + 2 = ?\nA:"]
    trained = _greedy(trainer.accelerator.unwrap_model(trainer.model), tokenizer, prompts)
    assert (
        _greedy(assert_deployable(final, value_model=kind, base_model=tiny_checkpoint), tokenizer, prompts) == trained
    )

    value_params = {n: p for n, p in snapshot(trainer.model).items() if "v_head" in n or "critic" in n}
    assert value_params and any(p.abs().sum() > 0 for n, p in value_params.items() if "v_head" in n)  # trained
    continued = _make(
        tiny_checkpoint, tmp_path / "continued", variant if variant != "lora" else "shared", model=str(final)
    )
    restored = snapshot(continued.model)
    for name, value in value_params.items():
        torch.testing.assert_close(restored[name], value, atol=0, rtol=0, msg=name)
    continued.train()  # and it trains on: the LoRA adapter is trainable again, the head too
    assert any(not torch.equal(p, restored[n]) for n, p in snapshot(continued.model).items() if "v_head" in n)
    continued.save_model(str(tmp_path / "continued-final"))
    assert_deployable(tmp_path / "continued-final", value_model=kind, base_model=tiny_checkpoint)


# --------------------------------------------------------------------------------------------------------- vLLM
class FakeVLLMGeneration:
    """Stands in for trl.generation.vllm_generation.VLLMGeneration (vLLM is not installed in CI)."""

    def __init__(self, model):
        self.model = model

    def _iter_named_params(self):
        for name, param in self.model.named_parameters():
            yield name, param.data


def test_value_head_never_reaches_the_vllm_weight_sync(tiny_checkpoint, tmp_path):
    trainer = make_trainer(tiny_checkpoint, tmp_path)
    generation = FakeVLLMGeneration(trainer.model)
    exclude_value_params_from_vllm_sync(generation)
    sent = [name for name, _ in generation._iter_named_params()]
    assert sent and not any("v_head" in n for n in sent)
    assert set(sent) == {n for n, _ in trainer.model.named_parameters()} - {"v_head.weight", "v_head.bias"}


def test_vllm_filter_fails_loudly_if_trl_renamed_its_hook():
    class Renamed:
        def _iter_params_v2(self):
            yield from ()

    with pytest.raises(RuntimeError, match="_iter_named_params is gone"):
        exclude_value_params_from_vllm_sync(Renamed())


def test_trls_vllm_backend_still_has_the_hook_we_wrap():
    pytest.importorskip("trl.generation.vllm_generation")
    from trl.generation.vllm_generation import VLLMGeneration

    assert callable(getattr(VLLMGeneration, "_iter_named_params", None))


# ------------------------------------------------------------------------------------------------- distributed
DIST_SCRIPT = Path(__file__).parent / "distributed" / "reft_two_steps.py"
ACCELERATE_CONFIGS = Path(__file__).parents[1] / "recipes" / "accelerate"


def _accelerate_launch(config: str, port: int, tiny_checkpoint: str, out: Path) -> dict:
    from test_reward_models import save_classifier
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    save_classifier(out / "reward_models" / "rm", tokenizer, seed=1)
    save_classifier(out / "reward_models" / "classifier", tokenizer, num_labels=3, seed=2)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIGS / config), "--main_process_port", str(port),
        str(DIST_SCRIPT), "--model", tiny_checkpoint, "--output_dir", str(out),
        "--reward_models", str(out / "reward_models"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ACCELERATE_CONFIGS.parents[1])
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_run(tiny_checkpoint, tmp_path):
    result = _accelerate_launch("multi_cpu.yaml", 29517, tiny_checkpoint, tmp_path / "ddp")
    assert result["world_size"] == 2 and not result["deepspeed"]
    assert result["value_head_changed"] and result["trunk_changed"]
    assert result["replicas_identical"]  # DDP kept both processes' weights in sync
    assert result["completions_per_rollout"] == 8  # 4 per process; the scores are gathered from both
    assert result["reward_model_error"] < 1e-4  # both reward models scored each process's own texts
    assert result["deployable"] == {"checkpoint-2": "exact", "final": "exact"}


@pytest.mark.slow
def test_two_process_deepspeed_zero2_run(tiny_checkpoint, tmp_path):
    pytest.importorskip("deepspeed")
    result = _accelerate_launch("zero2_cpu.yaml", 29518, tiny_checkpoint, tmp_path / "zero2")
    assert result["world_size"] == 2 and result["deepspeed"]
    assert result["value_head_changed"] and result["trunk_changed"]
    assert result["replicas_identical"]
    assert result["reward_model_error"] < 1e-4
    assert result["completions_per_rollout"] == 8
    assert result["deployable"] == {"checkpoint-2": "exact", "final": "exact"}
