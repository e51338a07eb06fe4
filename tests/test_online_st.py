"""Online-ST on ReFT's rollout loop: SFT on the correct samples mixed half-and-half with the gold CoT."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_deployable, cpu_trainer_settings

from reft_trl.data import TaskConfig, load_synthetic
from reft_trl.trainers.online_st import OnlineSTConfig, OnlineSTTrainer

TASK = TaskConfig(n_train=16, n_test_iid=4, n_test_ood=4)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


class ParityReward:
    """Deterministic: a completion is 'correct' when its length is even."""

    __name__ = "parity"

    def __call__(self, prompts, completions, **kwargs):
        return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


class NeverCorrect:
    __name__ = "never"

    def __call__(self, prompts, completions, **kwargs):
        return [0.1] * len(completions)


def make(checkpoint, tmp_path, reward, **overrides):
    return OnlineSTTrainer(
        model=checkpoint,
        reward_funcs=reward,
        args=OnlineSTConfig(**cpu_trainer_settings(tmp_path / "out", **{"max_completion_length": 12, **overrides})),
        train_dataset=load_synthetic("train", config=TASK, seed=0, cot="nl", kind="sft"),
    )


def test_no_kl_no_reference_no_value_head(checkpoint, tmp_path):
    trainer = make(checkpoint, tmp_path, ParityReward())
    assert trainer.ref_model is None and trainer.beta == 0
    assert not hasattr(trainer.model, "v_head") and not hasattr(trainer.model, "critic")
    with pytest.raises(ValueError, match="no KL penalty"):
        OnlineSTConfig(output_dir=str(tmp_path), kl_coef=0.1, use_cpu=True, report_to="none")


def test_loss_mixes_correct_samples_with_the_gold_cot(checkpoint, tmp_path):
    trainer = make(checkpoint, tmp_path, ParityReward())
    calls = []
    original = trainer._nll

    def recording(model, prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask=None):
        nll = original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask)
        calls.append((completion_ids.clone(), nll.detach().clone()))
        return nll

    trainer._nll = recording
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); this test calls the loss directly
    inputs = trainer._prepare_inputs(list(trainer.train_dataset.select(range(4))))
    correct = inputs["scores"] >= 1.0
    assert 0 < int(correct.sum()) < 4, "the parity reward should mark some, not all, samples correct"
    loss = trainer._compute_loss(trainer.model, inputs)

    gold_call, sample_call = calls
    torch.testing.assert_close(gold_call[0], inputs["gold_ids"])  # the gold CoT of every question
    torch.testing.assert_close(sample_call[0], inputs["completion_ids"][correct])  # only the correct samples
    expected = 0.5 * gold_call[1].mean() + 0.5 * sample_call[1].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    # The gold ids are the tokenised gold CoT followed by EOS.
    tok = trainer.processing_class
    first = inputs["gold_ids"][0][inputs["gold_mask"][0].bool()].tolist()
    assert first[-1] == tok.eos_token_id
    golds = {tok.decode(first[:-1])} & {row["completion"] for row in trainer.train_dataset}
    assert len(golds) == 1


def test_without_correct_samples_the_gold_cot_alone_is_learned(checkpoint, tmp_path):
    trainer = make(checkpoint, tmp_path, NeverCorrect())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["frac_correct_samples"] == 0 and logs["loss/sample_nll"] == 0
    assert logs["loss"] == pytest.approx(logs["loss/gold_nll"], rel=1e-4)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    trainer.save_model(str(tmp_path / "final"))
    assert_deployable(tmp_path / "final")  # no value function: a plain causal LM and nothing beside it


def test_rows_without_the_gold_cot_are_a_clear_error(checkpoint, tmp_path):
    trainer = OnlineSTTrainer(
        model=checkpoint,
        reward_funcs=ParityReward(),
        args=OnlineSTConfig(**cpu_trainer_settings(tmp_path, max_steps=1, max_completion_length=4)),
        train_dataset=load_synthetic("train", config=TASK, seed=0, cot="nl", kind="rl"),
    )
    with pytest.raises(KeyError, match="gold CoT in a 'completion' column"):
        trainer.train()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"multi_objective_aggregation": "normalize_then_sum"}, "not supported by OnlineSTTrainer"),
        ({"sync_ref_model": True}, "not supported by OnlineSTTrainer"),
        ({"ddp_find_unused_parameters": True}, "ddp_find_unused_parameters=True is not supported by OnlineSTTrainer"),
    ],
)
def test_the_grpo_settings_the_rollout_loop_cannot_honour_are_refused_as_for_reft(tmp_path, setting, message):
    """Online-ST's config carries only its own fields, but it refuses what ReFT's rollout loop cannot honour."""
    with pytest.raises(ValueError, match=message):
        OnlineSTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **setting)
    assert OnlineSTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none").ddp_find_unused_parameters is False


def test_online_st_takes_no_ppo_settings(tmp_path):
    with pytest.raises(TypeError, match="vf_coef"):
        OnlineSTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", vf_coef=1.0)
