"""GRPOConfig settings honoured in ReFT's PPO update, the refused ones, and the PPO knobs of verl/OpenRLHF.

Each honoured loss setting is checked against its definition: ``ReFTTrainer._compute_loss`` on a real rollout (old
log-probs perturbed so that ratios leave the clip range) must equal, in value and in gradient, the loss written out
here from an independent forward with :mod:`reft_trl.core`'s pure functions.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import cpu_trainer_settings
from test_reft_trainer import RecordingReward, prompts_dataset, snapshot
from transformers import TrainingArguments
from trl import GRPOConfig

from reft_trl import core
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.grpo_fields import GRPO_FIELDS, HONOURED, NOT_APPLICABLE, REFUSED, REFUSED_KIND, markdown_table


def grpo_config_fields() -> set[str]:
    """GRPOConfig's own fields: every field it declares, i.e. those TrainingArguments lacks plus its overrides."""
    training = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = set(GRPOConfig.__dict__.get("__annotations__", {}))
    return {f.name for f in dataclasses.fields(GRPOConfig) if f.name not in training} | own


# ------------------------------------------------------------------------------------------------ the table
def test_every_grpo_config_field_is_classified():
    fields = grpo_config_fields()
    missing = sorted(fields - set(GRPO_FIELDS))
    assert not missing, f"GRPOConfig fields missing from reft_trl.trainers.grpo_fields.GRPO_FIELDS: {missing}"
    assert not set(GRPO_FIELDS) - fields, "the table names fields GRPOConfig does not have"
    assert len(fields) == 79
    assert {kind for kind, _ in GRPO_FIELDS.values()} == {HONOURED, REFUSED_KIND, NOT_APPLICABLE}
    assert set(REFUSED) == {name for name, (kind, _) in GRPO_FIELDS.items() if kind == REFUSED_KIND}
    for name, allowed in REFUSED.items():  # the allowed value is GRPOConfig's default, so defaults never raise
        assert GRPOConfig.__dataclass_fields__[name].default == allowed, name


def test_the_configuration_page_carries_the_generated_table():
    from conftest import REPO_ROOT

    assert markdown_table() in (REPO_ROOT / "docs" / "configuration.md").read_text()


REFUSED_EXAMPLES = {
    "sync_ref_model": True,
    "ref_model_mixup_alpha": 0.9,
    "ref_model_sync_steps": 64,
    "sapo_temperature_neg": 2.0,
    "sapo_temperature_pos": 2.0,
    "vespo_k_pos": 1.0,
    "vespo_lambda_pos": 1.0,
    "vespo_k_neg": 1.0,
    "vespo_lambda_neg": 1.0,
    "multi_objective_aggregation": "normalize_then_sum",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fields_stop_the_run_at_config_time_with_the_reason(tmp_path, name):
    with pytest.raises(ValueError, match=rf"{name}=.*not supported by ReFTTrainer: .{{20,}}"):
        ReFTConfig(**cpu_trainer_settings(tmp_path, **{name: REFUSED_EXAMPLES[name]}))


@pytest.mark.parametrize("value", [True, False])
def test_use_bias_correction_kl_is_accepted_either_way(tmp_path, value):
    """Not applicable (GRPO's KL term in the loss; ReFT's KL is in the reward): TRL's default True and False, the
    value that describes ReFT, are both accepted and change nothing."""
    assert GRPO_FIELDS["use_bias_correction_kl"][0] == "not applicable"
    assert ReFTConfig(**cpu_trainer_settings(tmp_path, use_bias_correction_kl=value)).use_bias_correction_kl is value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_type": "cispo"}, r"loss_type='cispo' is not supported.*'grpo', 'bnpo', 'dr_grpo', 'dapo'"),
        ({"loss_type": "sapo"}, "loss_type='sapo' is not supported"),
        ({"scale_rewards": "batch"}, "scale_rewards='batch' is not supported"),
        ({"scale_rewards": "none"}, "only acts with advantage_estimator='grpo'"),
        ({"advantage_estimator": "grpo"}, r"needs num_generations >= 2, got 1"),
        ({"advantage_estimator": "rloo"}, r"needs num_generations >= 2, got 1"),
        ({"advantage_estimator": "vtrace"}, "advantage_estimator='vtrace' is not one of"),
        ({"kl_target": 6.0, "kl_coef": 0.0}, "initial kl_coef > 0"),
        ({"critic_warmup_steps": 2, "advantage_estimator": "reinforce_plus_plus"}, "needs a critic"),
        ({"critic_warmup_steps": 2, "weight_decay": 0.01}, "weight_decay"),
    ],
)
def test_settings_that_cannot_be_honoured_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        ReFTConfig(**cpu_trainer_settings(tmp_path, **overrides))


def test_defaults_keep_the_papers_update(tmp_path):
    config = ReFTConfig(**cpu_trainer_settings(tmp_path))
    assert config.loss_type == "grpo" and GRPOConfig.__dataclass_fields__["loss_type"].default == "dapo"
    assert (config.advantage_estimator, config.kl_target, config.critic_warmup_steps) == ("gae", None, 0)
    assert config.epsilon_high is None and config.delta is None and config.importance_sampling_level == "token"


# ------------------------------------------------------------------------------- honoured loss settings
def make(tiny_checkpoint, tmp_path, **overrides):
    settings = {"max_completion_length": 10, "seed": 0, **overrides}  # learning_rate 1e-3 (cpu_trainer_settings)
    return ReFTTrainer(
        model=tiny_checkpoint,
        reward_funcs=RecordingReward(),
        args=ReFTConfig(**cpu_trainer_settings(tmp_path / "out", **settings)),
        train_dataset=prompts_dataset(),
    )


def rollout(tiny_checkpoint, tmp_path, *, vary_lengths=True, **overrides):
    """A trainer and one real training rollout with old log-probs moved off the current policy (ratios != 1) and,
    with ``vary_lengths``, completions cut to different lengths (after the advantages were computed)."""
    trainer = make(tiny_checkpoint, tmp_path, **overrides)
    if hasattr(trainer.model, "v_head"):  # non-zero values, so the value loss means something
        with torch.no_grad():
            trainer.model.v_head.weight.copy_(
                torch.randn(trainer.model.v_head.weight.shape, generator=torch.Generator().manual_seed(2)) * 0.5
            )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); _compute_loss is called directly here
    batch = trainer._generate_and_score_completions(list(trainer.train_dataset.select(range(4))))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(batch["old_per_token_logps"].shape, generator=generator) * 0.3
    batch["old_per_token_logps"] = batch["old_per_token_logps"] + noise
    if not vary_lengths:
        return trainer, batch
    # completions of different lengths, so that the loss aggregations differ (the tiny model rarely stops by itself)
    T = batch["completion_mask"].size(1)
    lengths = torch.tensor([T, max(T - 3, 1), max(T // 2, 1), 1])[: batch["completion_mask"].size(0)]
    batch["completion_mask"] = batch["completion_mask"] * (torch.arange(T) < lengths[:, None])
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return trainer, batch


def independent_forward(trainer, batch):
    """Log-probs, entropies and values of the completion tokens, from a plain forward of the model (with grad)."""
    model = trainer.model
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    T = batch["completion_ids"].size(1)
    hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
    logits = model.lm_head(hidden)[:, -T - 1 : -1] / trainer.temperature
    logp_all = torch.log_softmax(logits.float(), -1)
    logps = logp_all.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    entropies = -(logp_all.exp() * logp_all).sum(-1)
    values = model.v_head(hidden).squeeze(-1)[:, -T - 1 : -1] if hasattr(model, "v_head") else None
    return logps, entropies, values


def expected_loss(trainer, batch, pg_per_token_fn=None):
    """pg + vf_coef * vf, written out with core's functions (single process, whole rollout in one micro-batch)."""
    args = trainer.args
    logps, entropies, values = independent_forward(trainer, batch)
    mask = batch["completion_mask"].float()
    agg = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean"}.get(
        args.loss_type, "seq-mean-token-sum-norm"
    )
    if pg_per_token_fn is None:
        pg = core.policy_loss(
            logps,
            batch["old_per_token_logps"],
            batch["advantages"],
            mask,
            args.epsilon,
            cliprange_high=args.epsilon_high,
            dual_clip=args.delta,
            loss_agg_mode=agg,
            max_len=args.max_completion_length,
        )
    else:
        pg = core.agg_loss(pg_per_token_fn(logps, entropies, mask), mask, agg, args.max_completion_length)
    loss = pg
    if values is not None:
        vf = core.value_loss(
            values, batch["old_values"], batch["returns"], mask, args.cliprange_value, loss_agg_mode=agg,
            max_len=args.max_completion_length,
        )  # fmt: skip
        loss = loss + args.vf_coef * vf
    return loss, entropies


def clipped_surrogate(ratio, batch, eps):
    """PPO's per-token clipped surrogate ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` on the rollout's advantages."""
    adv = batch["advantages"]
    return torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))


def assert_same_loss_and_gradients(trainer, batch, expected):
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    got = trainer._compute_loss(trainer.model, batch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    grads_got = torch.autograd.grad(got, params, allow_unused=True, retain_graph=True)
    grads_expected = torch.autograd.grad(expected, params, allow_unused=True)
    for g1, g2 in zip(grads_got, grads_expected, strict=True):
        if g1 is None or g2 is None:
            assert (g1 is None or not g1.any()) and (g2 is None or not g2.any())
        else:
            torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # loss_type="grpo", symmetric clip: the paper's update
        {"epsilon_high": 0.28},
        {"epsilon": 0.1, "epsilon_high": 0.3, "delta": 1.5},
        {"loss_type": "bnpo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo"},
        {"loss_type": "dapo", "epsilon_high": 0.28},
    ],
    ids=["grpo", "epsilon_high", "delta", "bnpo", "dr_grpo", "dapo", "dapo+clip_higher"],
)
def test_loss_settings_change_the_update_as_defined(tiny_checkpoint, tmp_path, overrides):
    trainer, batch = rollout(tiny_checkpoint, tmp_path, **overrides)
    expected, _ = expected_loss(trainer, batch)
    assert_same_loss_and_gradients(trainer, batch, expected)


def test_clip_settings_matter_on_this_rollout(tiny_checkpoint, tmp_path):
    """The perturbed rollout has ratios outside every clip range tested above, so each setting changes the loss."""
    trainer, batch = rollout(tiny_checkpoint, tmp_path)
    ratio = torch.exp(independent_forward(trainer, batch)[0] - batch["old_per_token_logps"])
    ratio = ratio[batch["completion_mask"].bool()]
    assert (ratio > 1.5).any() and (ratio < 0.9).any()
    default = trainer._compute_loss(trainer.model, batch).item()
    for name, value in (("epsilon_high", 0.28), ("loss_type", "dr_grpo"), ("loss_type", "bnpo"), ("delta", 1.2)):
        # GRPOTrainer reads epsilon_high and loss_type from itself, delta from its args; ReFT reads its args
        holders = [trainer.args] + ([trainer] if name != "delta" else [])
        originals = [getattr(h, name) for h in holders]
        for holder in holders:
            setattr(holder, name, value)
        assert trainer._compute_loss(trainer.model, batch).item() != pytest.approx(default, abs=1e-7), name
        for holder, original in zip(holders, originals):
            setattr(holder, name, original)
    assert trainer._compute_loss(trainer.model, batch).item() == default


def test_sequence_level_importance_sampling(tiny_checkpoint, tmp_path):
    trainer, batch = rollout(tiny_checkpoint, tmp_path, importance_sampling_level="sequence")
    old, eps = batch["old_per_token_logps"], trainer.args.epsilon

    def gspo(logps, entropies, mask):
        seq_log_ratio = ((logps - old) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        return clipped_surrogate(torch.exp(seq_log_ratio), batch, eps)

    expected, _ = expected_loss(trainer, batch, gspo)
    assert_same_loss_and_gradients(trainer, batch, expected)


def test_top_entropy_quantile_keeps_the_policy_gradient_on_high_entropy_tokens(tiny_checkpoint, tmp_path):
    trainer, batch = rollout(tiny_checkpoint, tmp_path, top_entropy_quantile=0.5)
    old, eps = batch["old_per_token_logps"], trainer.args.epsilon

    def high_entropy_only(logps, entropies, mask):
        keep = entropies.detach() >= torch.quantile(entropies.detach()[mask.bool()], 0.5)
        return clipped_surrogate(torch.exp(logps - old), batch, eps) * keep

    expected, _ = expected_loss(trainer, batch, high_entropy_only)
    assert_same_loss_and_gradients(trainer, batch, expected)


def test_off_policy_mask_threshold_drops_negative_advantage_tokens_of_drifted_sequences(tiny_checkpoint, tmp_path):
    trainer, batch = rollout(tiny_checkpoint, tmp_path, off_policy_mask_threshold=0.05)
    old, adv, eps = batch["old_per_token_logps"], batch["advantages"], trainer.args.epsilon

    def masked(logps, entropies, mask):
        seq_kl = ((old - logps.detach()) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
        keep = (adv >= 0) | (seq_kl <= 0.05)
        return clipped_surrogate(torch.exp(logps - old), batch, eps) * keep

    expected, _ = expected_loss(trainer, batch, masked)
    assert_same_loss_and_gradients(trainer, batch, expected)


def test_entropy_bonus_is_subtracted(tiny_checkpoint, tmp_path):
    trainer, batch = rollout(tiny_checkpoint, tmp_path, entropy_coef=0.1)
    expected, entropies = expected_loss(trainer, batch)
    mask = batch["completion_mask"].float()
    expected = expected - 0.1 * (entropies * mask).sum() / mask.sum()
    assert_same_loss_and_gradients(trainer, batch, expected)


def test_adaptive_entropy_bonus_moves_its_coefficient(tiny_checkpoint, tmp_path):
    trainer = make(
        tiny_checkpoint,
        tmp_path,
        use_adaptive_entropy=True,
        entropy_coef=0.1,
        entropy_target=100.0,  # above any entropy here: the coefficient goes up by entropy_coef_delta each step
        entropy_coef_delta=0.01,
        max_steps=2,
    )
    trainer.train()
    assert trainer.entropy_coef == pytest.approx(0.1 + 2 * 0.01)


def test_vllm_importance_sampling_ratio_is_applied_to_the_policy_term(tiny_checkpoint, tmp_path, monkeypatch):
    """Without vLLM: a known importance_sampling_ratio in the rollout, and the flags GRPOTrainer reads for it."""
    trainer, batch = rollout(tiny_checkpoint, tmp_path)
    generator = torch.Generator().manual_seed(1)
    is_ratio = torch.rand(batch["old_per_token_logps"].shape, generator=generator) * 2
    batch["importance_sampling_ratio"] = is_ratio
    monkeypatch.setattr(trainer, "use_vllm", True)
    monkeypatch.setattr(trainer, "vllm_importance_sampling_correction", True)
    old, eps = batch["old_per_token_logps"], trainer.args.epsilon

    def corrected(logps, entropies, mask):
        return clipped_surrogate(torch.exp(logps - old), batch, eps) * is_ratio

    expected, _ = expected_loss(trainer, batch, corrected)
    assert_same_loss_and_gradients(trainer, batch, expected)
    uncorrected, _ = expected_loss(trainer, batch)
    assert trainer._compute_loss(trainer.model, batch).item() != pytest.approx(uncorrected.item(), abs=1e-6)


def test_mask_truncated_completions_removes_them_from_rewards_and_loss(tiny_checkpoint, tmp_path):
    settings = dict(mask_truncated_completions=True, max_completion_length=3)
    trainer, batch = rollout(tiny_checkpoint, tmp_path, vary_lengths=False, **settings)
    truncated = ~torch.isin(batch["completion_ids"], torch.tensor(trainer.eos_token_ids)).any(-1)
    assert truncated.any()  # (all of them, here: the rollout still trains, with zero advantages)
    assert not batch["completion_mask"][truncated].any()
    assert not batch["advantages"][truncated].any() and not batch["returns"][truncated].any()


# ------------------------------------------------------------------------------------- verl/OpenRLHF knobs
@pytest.mark.parametrize(
    ("estimator", "generations"),
    [("gae", 2), ("reinforce_plus_plus", 1), ("reinforce_plus_plus_baseline", 2), ("grpo", 4), ("rloo", 2)],
)
def test_two_steps_with_each_estimator(tiny_checkpoint, tmp_path, estimator, generations):
    settings = dict(advantage_estimator=estimator, num_generations=generations, max_steps=2)
    trainer, batch = rollout(tiny_checkpoint, tmp_path / "rollout", vary_lengths=False, **settings)
    critic_free = estimator != "gae"
    assert hasattr(trainer.model, "v_head") != critic_free
    assert ("old_values" in batch) != critic_free and ("returns" in batch) != critic_free
    mask = batch["completion_mask"].bool()
    if estimator in ("grpo", "rloo"):  # one advantage per sequence, zero-sum within each prompt's group
        per_seq = batch["advantages"].sum(-1) / batch["completion_mask"].sum(-1).clamp(min=1)
        assert per_seq.view(-1, generations).sum(-1).abs().max() < 1e-4
    assert batch["advantages"][~mask].abs().sum() == 0
    trainer = make(tiny_checkpoint, tmp_path, **settings)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    logs = trainer.state.log_history[0]
    assert ("loss/value" in logs) != critic_free and "val/ratio" in logs and "objective/kl_coef" in logs


def test_critic_warmup_trains_only_the_value_head(tiny_checkpoint, tmp_path):
    trainer = make(tiny_checkpoint, tmp_path, critic_warmup_steps=2, max_steps=2, learning_rate=1e-2)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"v_head.weight", "v_head.bias"}


def test_after_the_critic_warmup_the_policy_learns(tiny_checkpoint, tmp_path):
    trainer = make(tiny_checkpoint, tmp_path, critic_warmup_steps=1, max_steps=2, learning_rate=1e-2)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before if not n.startswith("v_head"))


def test_adaptive_kl_coefficient_follows_the_controller_and_is_logged(tiny_checkpoint, tmp_path):
    settings = dict(kl_coef=0.05, kl_target=1e-3, kl_horizon=100, max_steps=3, num_ppo_epochs=1, learning_rate=1e-2)
    trainer = make(tiny_checkpoint, tmp_path, **settings)
    controller = core.AdaptiveKLController(0.05, 1e-3, 100)
    trainer.train()
    coefs = [log["objective/kl_coef"] for log in trainer.state.log_history if "objective/kl_coef" in log]
    kls = [log["objective/kl"] for log in trainer.state.log_history if "objective/kl" in log]
    assert len(coefs) == 3 and coefs[0] == pytest.approx(0.05)
    for used, kl, following in zip(coefs, kls, coefs[1:]):  # updated after each rollout with its KL, 4 samples
        assert used == pytest.approx(controller.value, abs=1e-12)
        controller.update(kl, n_steps=4)
        assert following == pytest.approx(controller.value, abs=1e-12)
    assert len(set(coefs)) == 3  # it moved at every rollout
    assert trainer._kl_ctl.value == pytest.approx(controller.update(kls[-1], n_steps=4), abs=1e-12)


def test_resume_is_bit_identical_with_the_adaptive_kl_controller(tiny_checkpoint, tmp_path):
    settings = dict(kl_coef=0.05, kl_target=1e-3, kl_horizon=50, max_steps=4, save_strategy="steps", save_steps=1)
    full = make(tiny_checkpoint, tmp_path / "full", **settings)
    full.train()
    expected = snapshot(full.model)
    state = torch.load(tmp_path / "full" / "out" / "checkpoint-2" / "reft_rollout_state-0.pt", weights_only=False)
    assert state["kl_controller"]["value"] != 0.05 and full._kl_ctl.value != state["kl_controller"]["value"]
    resumed = make(tiny_checkpoint, tmp_path / "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "out" / "checkpoint-2"))
    got = snapshot(resumed.model)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=name)
    assert resumed._kl_ctl.value == full._kl_ctl.value


def test_ppo_metrics_of_trl_1_12_are_logged(tiny_checkpoint, tmp_path):
    trainer = make(tiny_checkpoint, tmp_path, max_steps=1)
    trainer.train()
    logs = trainer.state.log_history[0]
    for name in ("val/ratio", "val/ratio_var", "val/num_eos_tokens", "eps", "objective/kl", "objective/scores"):
        assert name in logs, name
    assert logs["val/ratio"] == pytest.approx(1.0, abs=0.2) and logs["val/ratio_var"] >= 0
    assert 0 <= logs["val/num_eos_tokens"] <= 4 and logs["eps"] > 0
