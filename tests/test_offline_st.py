"""Offline self-training: selection of correct, de-duplicated samples, the mixed dataset, and the recipe end to end."""

from __future__ import annotations

import json

import pytest
from conftest import assert_deployable

from reft_trl.data import TaskConfig, load_synthetic
from reft_trl.data.args import DataArguments
from reft_trl.evaluation import read_samples
from reft_trl.evaluation import samplers as samplers_module
from reft_trl.evaluation.args import SamplingArguments
from reft_trl.evaluation.records import grade_samples
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.trainers import WarmupSFTConfig
from reft_trl.trainers.offline_st import offline_st_dataset, select_correct_samples

TRIGGER = "Therefore, the answer is: "
SMALL_TASK = TaskConfig(n_train=6, n_test_iid=4, n_test_ood=4)


def rec(q, s, completion, correct=True):
    return {"question_index": q, "sample_index": s, "completion": completion, "correct": correct, "item_id": f"q{q}"}


def test_selection_keeps_exactly_the_correct_distinct_samples_up_to_m():
    question0 = [
        rec(0, 0, "a = 1\nTherefore, the answer is: 5"),
        rec(0, 1, "wrong\nTherefore, the answer is: 6", correct=False),
        rec(0, 2, "  a = 1\nTherefore, the answer is: 5\n"),  # same up to whitespace: a duplicate
        rec(0, 3, "b = 2\nTherefore, the answer is: 5"),
        rec(0, 4, "gold\nTherefore, the answer is: 5"),  # the original row's completion
        rec(0, 5, "c = 3\nTherefore, the answer is: 5"),
        rec(0, 6, "d = 4\nTherefore, the answer is: 5"),  # 5th distinct correct sample: over m=4
        rec(0, 7, "b = 2\nTherefore, the answer is: 5"),  # duplicate (counted before the limit)
    ]
    question1 = [rec(1, 0, "nothing", correct=False)]
    question2 = [rec(2, s, f"x = {s}\nTherefore, the answer is: 1") for s in range(3)]
    kept, stats = select_correct_samples(
        [question0, question1, question2],
        max_per_question=4,
        gold_completions=["gold\nTherefore, the answer is: 5", "g1", None],
    )
    assert [[r["sample_index"] for r in q] for q in kept] == [[0, 3, 5], [], [0, 1, 2]]
    assert stats == {
        "questions": 3,
        "samples": 12,
        "correct_samples": 10,
        "questions_with_correct": 2,
        "duplicates_removed": 2,
        "over_limit": 1,
        "same_as_gold": 1,
        "kept_samples": 6,
    }
    # No limit keeps every distinct correct sample; m=0 keeps none.
    assert len(select_correct_samples([question0], max_per_question=None)[0][0]) == 5
    assert select_correct_samples([question0], max_per_question=0)[0] == [[]]
    with pytest.raises(ValueError, match="max_per_question must be >= 0"):
        select_correct_samples([question0], max_per_question=-1)
    with pytest.raises(ValueError, match="2 gold completions for 1 questions"):
        select_correct_samples([question0], gold_completions=["a", "b"])


@pytest.fixture(params=["nl", "python"])
def cot(request):
    return request.param


def canned_completions(row, cot: str, s: int) -> str:
    """Sample s of a question: 0, 1 right and identical; 2 wrong; 3 right and new; 4 unparsable."""
    gold = int(row["answer"])
    value = gold + 1 if s == 2 else gold
    if cot == "python":
        body = f"    result = {value}\n    return result" if s != 3 else f"    x = {value}\n    return x"
        return body if s != 4 else "    return undefined"
    text = f"{value} apples\n{TRIGGER}{value}" if s != 3 else f"so {value}\n{TRIGGER}{value}"
    return text if s != 4 else "I do not know"


def test_mixed_dataset_has_every_original_row_and_the_kept_samples_verbatim(cot):
    sft = load_synthetic("train", config=SMALL_TASK, seed=0, cot=cot, kind="sft")
    rl = list(load_synthetic("train", config=SMALL_TASK, seed=0, cot=cot, kind="rl"))
    completions = [[canned_completions(row, cot, s) for s in range(5)] for row in rl]
    samples = grade_samples(rl, completions)
    assert [r["status"] for r in samples[:5]] == ["correct", "correct", "wrong", "correct", "unparsable"]
    dataset, stats = offline_st_dataset(sft, rl, samples, max_per_question=10)
    assert stats["kept_samples"] == 2 * len(rl) and stats["duplicates_removed"] == len(rl)
    assert stats["questions_with_correct"] == len(rl) and stats["original_rows"] == len(sft)
    assert len(dataset) == stats["train_rows"] == len(sft) + 2 * len(rl)
    original = [r for r in dataset if r["source"] == "original"]
    assert [(r["prompt"], r["completion"]) for r in original] == [(r["prompt"], r["completion"]) for r in sft]
    new = [r for r in dataset if r["source"] == "sample"]
    expected = [(row["prompt"], completions[q][s]) for q, row in enumerate(rl) for s in (0, 3)]
    assert [(r["prompt"], r["completion"]) for r in new] == expected
    if cot == "python":  # the header ends the prompt; the completion is the body the model wrote
        assert all(r["prompt"].endswith('"""\n') and r["completion"].startswith("    ") for r in new)
    # m = 1 keeps only the first distinct correct sample.
    dataset, stats = offline_st_dataset(sft, rl, samples, max_per_question=1)
    assert stats["kept_samples"] == len(rl) and stats["over_limit"] == len(rl)


def test_conversational_samples_become_assistant_messages():
    sft = load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="sft", chat=True)
    rl = list(load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="rl", chat=True))
    samples = grade_samples(rl, [[f"so\n{TRIGGER}{row['answer']}"] for row in rl])
    dataset, _ = offline_st_dataset(sft, rl, samples)
    new = [r for r in dataset if r["source"] == "sample"]
    assert new[0]["prompt"] == rl[0]["prompt"]
    assert new[0]["completion"] == [{"role": "assistant", "content": f"so\n{TRIGGER}{rl[0]['answer']}"}]


def test_samples_of_other_data_are_rejected():
    sft = load_synthetic("train", config=SMALL_TASK, seed=0, kind="sft")
    rl = list(load_synthetic("train", config=SMALL_TASK, seed=0, kind="rl"))
    samples = grade_samples(rl, [["x"] for _ in rl])
    samples[0]["item_id"] = "gsm8k_0"
    with pytest.raises(ValueError, match="item_id 'gsm8k_0'.*taken on other data"):
        offline_st_dataset(sft, rl, samples)


class CannedSampler:
    def __init__(self, rows, cot):
        self.rows = {row["prompt"]: row for row in rows}
        self.cot = cot
        self.calls = 0

    def __call__(self, prompts, *, num_samples, do_sample, seed):
        assert do_sample
        self.calls += 1
        return [[canned_completions(self.rows[p], self.cot, s % 5) for s in range(num_samples)] for p in prompts]


@pytest.mark.slow
def test_offline_st_recipe_end_to_end_and_resumes_without_resampling(tmp_path, monkeypatch, load_recipe):
    recipe = load_recipe("offline_st")
    tok = char_tokenizer()
    base = tmp_path / "base"
    tiny_llama(tok, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    data_args = DataArguments(
        dataset="synthetic",
        cot="python",
        eval_split="test_iid",
        max_eval_samples=2,
        task_config={"n_train": 6, "n_test_iid": 4, "n_test_ood": 4},
    )
    rl = list(data_args.train_dataset("rl", data_args.task()))
    sampler = CannedSampler(rl, "python")
    built = []
    monkeypatch.setattr(samplers_module, "build_sampler", lambda *a, **k: built.append(k) or sampler)
    st_args = recipe.OfflineSTArguments(warmup_model_name_or_path=str(base), max_per_question=10)
    sampling_args = SamplingArguments(num_samples=5, shard_size=4, max_new_tokens=8, backend="transformers")

    from trl import ModelConfig

    def training_args():
        return WarmupSFTConfig(
            output_dir=str(tmp_path / "offline_st"),
            max_steps=2,
            per_device_train_batch_size=4,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            disable_tqdm=True,
        )

    model_args = ModelConfig(model_name_or_path=str(base))
    trainer, stats = recipe.main(data_args, st_args, sampling_args, training_args(), model_args)
    assert sampler.calls == 2 and built[0]["temperature"] == 1.0 and built[0]["top_k"] == 0  # 6 questions, 2 shards
    assert len(read_samples(tmp_path / "offline_st" / "samples")) == 6 * 5
    summary = json.loads((tmp_path / "offline_st" / "offline_st_summary.json").read_text())
    assert summary["questions_with_correct"] == 6 and summary["kept_samples"] == 12
    assert summary["duplicates_removed"] == 6 and summary["train_rows"] == 6 + 12
    assert len(trainer.train_dataset) == 18 and trainer.state.global_step == 2
    assert_deployable(tmp_path / "offline_st")
    # Rerun (e.g. after a crash during training): every shard is complete, so nothing is sampled again.
    recipe.main(data_args, st_args, sampling_args, training_args(), model_args)
    assert sampler.calls == 2 and len(built) == 1
    with pytest.raises(ValueError, match="--warmup_model_name_or_path is required"):
        recipe.main(data_args, recipe.OfflineSTArguments(), sampling_args, training_args(), model_args)
