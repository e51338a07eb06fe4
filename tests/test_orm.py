"""The ORM: labelled data from samples, the classifier's pad token and scoring, training with Trainer, the recipe."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_deployable

from reft_trl.data import TaskConfig, load_synthetic
from reft_trl.data.args import DataArguments
from reft_trl.evaluation import samplers as samplers_module
from reft_trl.evaluation.args import SamplingArguments
from reft_trl.evaluation.records import grade_samples
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.trainers.orm import (
    ORMConfig,
    build_orm_dataset,
    load_orm,
    load_orm_tokenizer,
    orm_scores,
    orm_text,
    orm_trainer,
    tokenize_orm_dataset,
)

TRIGGER = "Therefore, the answer is: "
SMALL_TASK = TaskConfig(n_train=4, n_test_iid=4, n_test_ood=4)


def canned(row, s: int) -> str:
    """0 right, 1 the same text again, 2 wrong, 3 unparsable, 4 right with other words."""
    gold = int(row["answer"])
    return [
        f"ok\n{TRIGGER}{gold}",
        f"ok\n{TRIGGER}{gold}  ",
        f"hm\n{TRIGGER}{gold + 2}",
        "no answer here",
        f"so\n{TRIGGER}{gold}",
    ][s % 5]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = char_tokenizer()
    path = tmp_path_factory.mktemp("tiny_causal")
    tiny_llama(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_labels_and_per_question_dedup():
    rows = list(load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="rl"))
    samples = grade_samples(rows, [[canned(row, s) for s in range(5)] for row in rows])
    dataset, stats = build_orm_dataset(rows, samples)
    assert len(dataset) == 4 * len(rows)  # sample 1 duplicates sample 0 (up to whitespace)
    assert [r["sample_index"] for r in dataset if r["question_index"] == 0] == [0, 2, 3, 4]
    assert [r["label"] for r in dataset if r["question_index"] == 0] == [1, 0, 0, 1]  # correct 1, wrong/unparsable 0
    assert stats == {
        "samples": 5 * len(rows),
        "duplicates_removed": len(rows),
        "unparsable_dropped": 0,
        "positives": 2 * len(rows),
        "negatives": 2 * len(rows),
        "questions": len(rows),
        "rows": 4 * len(rows),
    }
    assert dataset[0]["text"] == rows[0]["prompt"] + canned(rows[0], 0)
    # Identical completions of different questions are not duplicates (the question is part of the text).
    same = grade_samples(rows[:2], [["same text"], ["same text"]])
    assert len(build_orm_dataset(rows[:2], same)[0]) == 2
    # Without the unparsable samples:
    dataset, stats = build_orm_dataset(rows, samples, include_unparsable=False)
    assert [r["label"] for r in dataset if r["question_index"] == 0] == [1, 0, 1]
    assert stats["unparsable_dropped"] == len(rows)
    with pytest.raises(ValueError, match="No ORM training rows"):
        build_orm_dataset(rows[:1], grade_samples(rows[:1], [["nothing"]]), include_unparsable=False)


def test_p_cot_text_is_the_whole_program():
    rows = list(load_synthetic("train", config=SMALL_TASK, seed=0, cot="python", kind="rl"))
    body = f"    return {rows[0]['answer']}"
    dataset, _ = build_orm_dataset(rows[:1], grade_samples(rows[:1], [[body]]))
    assert dataset[0]["label"] == 1
    assert dataset[0]["text"].endswith(rows[0]["completion_prefix"] + body)


def test_chat_prompts_need_the_tokenizer():
    with pytest.raises(ValueError, match="needs the tokenizer"):
        orm_text([{"role": "user", "content": "q"}], "a")


def test_classifier_from_a_causal_checkpoint_has_a_pad_token_and_scores_padded_batches_right(tiny_dir, tmp_path):
    # A tokenizer without a pad token (common for hub LMs) gets its EOS token as pad.
    tok = char_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    tiny_llama(char_tokenizer(), seed=0).save_pretrained(tmp_path / "nopad")
    tokenizer = load_orm_tokenizer(str(tmp_path / "nopad"))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    model = load_orm(str(tmp_path / "nopad"), tokenizer)
    assert model.config.pad_token_id == tokenizer.eos_token_id and model.config.num_labels == 2
    assert model.config.id2label == {0: "incorrect", 1: "correct"}
    texts = ["short", "a much longer text than the first one", "mid-sized text"]
    batched = orm_scores(model, tokenizer, texts, batch_size=3, progress=False)
    alone = [orm_scores(model, tokenizer, [t], batch_size=1, progress=False)[0] for t in texts]
    assert batched == pytest.approx(alone, abs=1e-5)  # padding does not move the token the classifier reads
    assert all(0 < p < 1 for p in batched) and len(set(batched)) == 3
    with torch.no_grad():
        logits = model(**tokenizer(texts[:1], return_tensors="pt")).logits
    assert batched[0] == pytest.approx(logits.softmax(-1)[0, 1].item(), abs=1e-6)  # P(correct) = softmax[1]


def test_truncation_keeps_the_end_of_the_text(tiny_dir):
    tokenizer = load_orm_tokenizer(str(tiny_dir))
    from datasets import Dataset

    text = "Question: ...long... Therefore, the answer is: 42"
    encoded = tokenize_orm_dataset(Dataset.from_list([{"text": text, "label": 1}]), tokenizer, max_length=10)
    assert tokenizer.decode(encoded[0]["input_ids"]) == text[-10:]
    assert encoded[0]["labels"] == 1


def test_two_training_steps_change_the_weights_and_the_saved_orm_reloads(tiny_dir, tmp_path):
    rows = list(load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="rl"))
    samples = grade_samples(rows, [[canned(row, s) for s in range(5)] for row in rows])
    dataset, _ = build_orm_dataset(rows, samples)
    tokenizer = load_orm_tokenizer(str(tiny_dir))
    model = load_orm(str(tiny_dir), tokenizer)
    args = ORMConfig(
        output_dir=str(tmp_path / "orm"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.max_length) == (3.0, 4, 700)
    assert (
        ORMConfig(output_dir="x").learning_rate == 1e-6 and ORMConfig(output_dir="x").per_device_train_batch_size == 24
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = orm_trainer(model, tokenizer, args, dataset)
    trainer.train()
    assert trainer.state.global_step == 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert "score.weight" in changed and any(n.startswith("model.layers") for n in changed)
    trainer.save_model(str(tmp_path / "orm"))
    assert_deployable(tmp_path / "orm")  # a plain sequence classifier: nothing but its own weights
    texts = dataset["text"][:4]
    expected = orm_scores(model, tokenizer, texts, progress=False)
    reloaded_tok = load_orm_tokenizer(str(tmp_path / "orm"))
    reloaded = load_orm(str(tmp_path / "orm"), reloaded_tok)
    assert reloaded.config.pad_token_id == tokenizer.pad_token_id
    assert orm_scores(reloaded, reloaded_tok, texts, progress=False) == pytest.approx(expected, abs=1e-6)


def test_orm_recipe_end_to_end(tiny_dir, tmp_path, monkeypatch, load_recipe):
    recipe = load_recipe("orm")
    data_args = DataArguments(dataset="synthetic", task_config={"n_train": 4, "n_test_iid": 4, "n_test_ood": 4})
    rows = {row["prompt"]: row for row in data_args.train_dataset("rl", data_args.task())}
    calls = []

    def sampler(prompts, *, num_samples, do_sample, seed):
        calls.append(len(prompts))
        return [[canned(rows[p], s) for s in range(num_samples)] for p in prompts]

    monkeypatch.setattr(samplers_module, "build_sampler", lambda *a, **k: sampler)
    from trl import ModelConfig

    args = ORMConfig(
        output_dir=str(tmp_path / "orm"),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer, stats = recipe.main(
        data_args,
        recipe.ORMArguments(),
        SamplingArguments(num_samples=5, backend="transformers"),
        args,
        ModelConfig(model_name_or_path=str(tiny_dir)),
    )
    assert calls == [4] and trainer.state.global_step == 2
    summary = json.loads((tmp_path / "orm" / "orm_summary.json").read_text())
    assert summary["rows"] == 16 and summary["positives"] == 8 and summary["duplicates_removed"] == 4
    tokenizer = load_orm_tokenizer(str(tmp_path / "orm"))
    model = load_orm(str(tmp_path / "orm"), tokenizer)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    (score,) = orm_scores(model, tokenizer, ["Question:\nx\nAnswer reasoning:\n1\nTherefore, the answer is: 1"])
    assert 0 < score < 1
