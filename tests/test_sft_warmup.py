"""The SFT warm-up trainer: greedy answer accuracy at each evaluation, per-epoch checkpoints, best checkpoint."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_deployable
from datasets import Dataset

from reft_trl.data import TaskConfig, load_synthetic
from reft_trl.evaluation import accuracy as accuracy_module
from reft_trl.evaluation import answer_accuracy, generate_completions, grade_rows, score_rows
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.trainers import WarmupSFTConfig, WarmupSFTTrainer

SMALL_TASK = TaskConfig(n_train=24, n_test_iid=8, n_test_ood=8)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_grade_rows_and_score_rows_tell_correct_wrong_and_unparsable_apart():
    rows = [
        {"answer": "12", "answer_format": "numeric", "cot": "nl"},
        {"answer": "12", "answer_format": "numeric", "cot": "nl"},
        {"answer": "12", "answer_format": "numeric", "cot": "nl"},
        {"answer": "c", "answer_format": "multiple_choice", "cot": "nl"},
    ]
    completions = [
        "3 * 4 = 12\nTherefore, the answer is: 12",
        "3 + 4 = 7\nTherefore, the answer is: 7",
        "I am not sure.",
        "Therefore, the answer is: (C)",
    ]
    assert [o.status for o in grade_rows(rows, completions)] == ["correct", "wrong", "unparsable", "correct"]
    # score_rows gives rewards, like its sibling score_completions
    assert score_rows(rows, completions) == [1.0, 0.1, 0.0, 1.0]


def test_answer_accuracy_counts_outcomes_over_the_dataset(monkeypatch, tok):
    rows = [{"prompt": f"Q{i}", "answer": str(i), "answer_format": "numeric", "cot": "nl"} for i in range(5)]
    canned = {
        "Q0": "Therefore, the answer is: 0",
        "Q1": "Therefore, the answer is: 1",
        "Q2": "Therefore, the answer is: 9",
        "Q3": "no idea",
        "Q4": "Therefore, the answer is: 4.0",
    }

    def fake_generate(model, tokenizer, prompts, **kwargs):
        return [[canned[p]] for p in prompts]

    monkeypatch.setattr(accuracy_module, "generate_completions", fake_generate)
    result = answer_accuracy(None, tok, rows, progress=False)
    assert result == {"accuracy": pytest.approx(3 / 5), "unparsable": pytest.approx(1 / 5), "n": 5}
    with pytest.raises(ValueError, match="empty dataset"):
        answer_accuracy(None, tok, [], progress=False)


def test_generate_completions_keeps_prompt_order_and_sample_count(tok):
    model = tiny_llama(tok, seed=1)
    prompts = ["a much longer prompt than the others", "hi", "medium prompt"]
    greedy = generate_completions(model, tok, prompts, max_new_tokens=5, batch_size=2, progress=False)
    assert [len(c) for c in greedy] == [1, 1, 1]
    # Greedy decoding of each prompt alone gives the same text: batching and length-sorting changed nothing.
    alone = [generate_completions(model, tok, [p], max_new_tokens=5, progress=False)[0][0] for p in prompts]
    assert [c[0] for c in greedy] == alone
    sampled = generate_completions(
        model, tok, prompts, num_samples=3, do_sample=True, max_new_tokens=5, seed=0, progress=False
    )
    assert [len(c) for c in sampled] == [3, 3, 3]
    again = generate_completions(
        model, tok, prompts, num_samples=3, do_sample=True, max_new_tokens=5, seed=0, progress=False
    )
    assert sampled == again  # seeded
    with pytest.raises(ValueError, match="needs do_sample=True"):
        generate_completions(model, tok, prompts, num_samples=2, max_new_tokens=5, progress=False)


def test_warmup_trainer_measures_accuracy_each_epoch_and_keeps_every_checkpoint(tok, tmp_path):
    model_dir = tmp_path / "base"
    tiny_llama(tok, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    train = load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="sft")
    accuracy_rows = load_synthetic("test_ood", config=SMALL_TASK, seed=0, cot="nl", kind="rl")
    args = WarmupSFTConfig(
        output_dir=str(tmp_path / "sft"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        accuracy_max_new_tokens=8,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = WarmupSFTTrainer(
        model=str(model_dir), args=args, train_dataset=train, accuracy_dataset=accuracy_rows, processing_class=tok
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert [round(e["epoch"]) for e in evaluations] == [1, 2]  # exactly one evaluation per epoch
    assert all(0 <= e["eval_accuracy"] <= 1 and 0 <= e["eval_unparsable"] <= 1 for e in evaluations)
    checkpoints = sorted(p.name for p in (tmp_path / "sft").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]
    for name in checkpoints:
        assert_deployable(tmp_path / "sft" / name)
    assert trainer.state.best_model_checkpoint in {str(tmp_path / "sft" / c) for c in checkpoints}
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_warmup_trainer_logs_heldout_loss_too_when_given_an_eval_dataset(tok, tmp_path):
    model_dir = tmp_path / "base"
    tiny_llama(tok, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    train = load_synthetic("train", config=SMALL_TASK, seed=0, cot="python", kind="sft")
    args = WarmupSFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        accuracy_max_new_tokens=4,
        metric_for_best_model=None,
        disable_tqdm=True,
    )
    trainer = WarmupSFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=train,
        eval_dataset=Dataset.from_list(list(train.select(range(4)))),
        accuracy_dataset=load_synthetic("test_iid", config=SMALL_TASK, seed=0, cot="python", kind="rl"),
        processing_class=tok,
    )
    trainer.train()
    (evaluation,) = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert "eval_accuracy" in next(e for e in trainer.state.log_history if "eval_accuracy" in e)
    assert evaluation["eval_loss"] > 0
