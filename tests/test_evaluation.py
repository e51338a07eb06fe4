"""Majority voting, ORM reranking, the @k curve, sharded resumable sampling, and recipes/evaluate.py end to end."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reft_trl.data import TaskConfig, load_synthetic, python_header
from reft_trl.data.args import DataArguments
from reft_trl.evaluation import (
    at_k_accuracy,
    default_ks,
    group_by_question,
    majority_vote,
    majority_vote_index,
    read_samples,
    rerank_index,
    sample_to_shards,
)
from reft_trl.evaluation import samplers as samplers_module
from reft_trl.evaluation.records import grade_samples
from reft_trl.evaluation.samplers import LazySampler
from reft_trl.evaluation.shards import shard_path
from reft_trl.evaluation.voting import vote_counts
from reft_trl.models.tiny import char_tokenizer, tiny_llama
from reft_trl.rewards import Outcome, get_answer_format, grade_rows

TRIGGER = "Therefore, the answer is: "


# --------------------------------------------------------------------------------------------- majority vote goldens


def golden_records(goldens: Path) -> list[dict]:
    return json.loads((goldens / "majority_vote_dev.json").read_text())


def as_answer(value):
    """The golden JSON writes the reference's parsed NaN as the string "nan"; every parse gives a new float object."""
    return float("nan") if value == "nan" else value


def test_majority_vote_reproduces_every_golden_record(goldens):
    numeric = get_answer_format("numeric")
    for record in golden_records(goldens):
        answers = [as_answer(a) for a in record["extracted"]]
        voted = majority_vote(answers)
        expected = record["most_voted_answer"]
        assert voted == expected, record["note"]
        if expected is not None:
            assert math.copysign(1, voted) == math.copysign(1, expected), record["note"]  # -0.0 is reported as -0.0
        correct = voted is not None and numeric.is_correct(voted, numeric.parse_gold(record["gold"]))
        assert correct == record["is_correct"], record["note"]
        # The vote's correctness is the correctness of the first sample carrying the voted answer.
        index = majority_vote_index(answers)
        assert (index is not None and record["per_sample_correct"][index]) == record["is_correct"], record["note"]


# The reference's extraction defects the project fixes on purpose (see reft_trl.rewards.extractors): "$5" and
# "5 apples" are 5, "1,000" is 1000, "nan" is not an answer.
EXTRACTION_FIXES = {
    11: ([5.0, 5.0, 6.0], 5.0, True),
    12: ([6.0, None, None], 6.0, False),
    14: ([1000.0, 1000.0, 1000.0], 1000.0, True),
}


def test_golden_completions_extract_like_the_reference_except_the_documented_fixes(goldens):
    records = golden_records(goldens)
    assert len(records) == 20
    for record in records:
        rows = [{"answer": record["gold"], "answer_format": "numeric", "cot": record["format"]}]
        outcomes = grade_rows(rows * len(record["completions"]), record["completions"])
        extracted = [o.answer for o in outcomes]
        if record["id"] in EXTRACTION_FIXES:
            expected, voted, correct = EXTRACTION_FIXES[record["id"]]
            assert extracted == expected, record["note"]
            assert extracted != record["extracted"]
        else:
            expected, voted, correct = record["extracted"], record["most_voted_answer"], record["is_correct"]
            assert extracted == expected, record["note"]
            assert [o.status == "correct" for o in outcomes] == record["per_sample_correct"], record["note"]
        assert majority_vote(outcomes) == voted, record["note"]
        index = majority_vote_index(outcomes)
        assert (index is not None and outcomes[index].status == "correct") == correct, record["note"]


# ------------------------------------------------------------------------------------------------ majority vote rules


def counter_vote(answers):
    """The reference's rule: collections.Counter over the non-None answers, most_common(1)."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.0, 3.0])), max_size=12))
def test_majority_vote_agrees_with_the_reference_counter(answers):
    assert majority_vote(answers) == counter_vote(answers)
    index = majority_vote_index(answers)
    assert (index is None) == all(a is None for a in answers)
    if index is not None:  # the index points at the FIRST sample with the voted answer
        assert answers[index] == majority_vote(answers)
        assert all(a is None or a != answers[index] for a in answers[:index])


def test_majority_vote_rules():
    assert majority_vote([6.0, 5.0, 5.0, 6.0]) == 6.0  # tie: the answer seen first
    assert majority_vote([None, None, 4.0, None]) == 4.0  # None does not vote
    assert majority_vote([]) is None and majority_vote([None]) is None
    assert majority_vote([5, 5.0, 6.0, 6.0, 6.0]) == 6.0
    assert majority_vote([5, 5.0, 6.0]) == 5  # 5 == 5.0: two votes
    assert majority_vote(["c", "a", "c", None]) == "c"  # multiple choice letters
    assert majority_vote([5.001, 5.002, 6.0, 6.0]) == 6.0  # no tolerance inside the vote
    nan = float("nan")
    assert majority_vote([nan, nan, 7.0, 7.0]) == 7.0  # even the same NaN object never groups: 1 + 1 < 2
    assert vote_counts([nan, nan]) == [(0, 1), (1, 1)]
    outcomes = [Outcome(None, "unparsable", 0.0), Outcome(3.0, "wrong", 0.1), Outcome(3.0, "wrong", 0.1)]
    assert majority_vote(outcomes) == 3.0 and majority_vote_index(outcomes) == 1
    records = [{"answer": None}, {"answer": "b"}, {"answer": "a"}, {"answer": "a"}]
    assert majority_vote_index(records) == 2


# ------------------------------------------------------------------------------------------------------- reranking


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.one_of(st.none(), st.integers(0, 3))), min_size=1, max_size=10))
def test_rerank_picks_the_highest_score_among_samples_with_an_answer(samples):
    scores = [s for s, _ in samples]
    answers = [a for _, a in samples]
    pick = rerank_index(scores, answers)
    answered = [i for i, a in enumerate(answers) if a is not None]
    if not answered:
        assert pick is None
        return
    assert answers[pick] is not None
    assert scores[pick] == max(scores[i] for i in answered)
    assert pick == min(i for i in answered if scores[i] == scores[pick])  # ties: the earliest sample


def test_rerank_ignores_higher_scored_samples_without_an_answer():
    answers = [None, 3.0, None, 4.0, None]
    assert rerank_index([0.99, 0.2, 0.98, 0.3, 0.97], answers) == 3
    assert rerank_index([0.0, 0.9, 0.0, 0.3, 0.0], answers) == 1  # the choice follows the scores
    assert rerank_index([0.9, 0.5, 0.9, 0.5, 0.9], answers) == 1  # ties: the earliest answered sample
    assert rerank_index([0.9, 0.8], [None, None]) is None
    assert rerank_index([None, 0.1], [None, 2.0]) == 1  # no score needed where there is no answer
    outcomes = [Outcome(None, "unparsable", 0.0), Outcome(2.0, "correct", 1.0)]
    assert rerank_index([1.0, 0.0], outcomes) == 1
    with pytest.raises(ValueError, match="2 scores for 3 samples"):
        rerank_index([0.1, 0.2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="Sample 1 has an answer but its ORM score is nan"):
        rerank_index([0.1, float("nan")], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------------- the @k curve


def rec(answer, correct, score=None):
    return {"answer": answer, "correct": correct, "orm_score": score}


def test_at_k_accuracy_uses_the_first_k_samples_of_each_question():
    questions = [
        # voting@1 right, voting@4 wrong (6 wins 2-1 over 5... after the tie rule), rerank picks the 0.9
        [rec(5, True, 0.1), rec(6, False, 0.2), rec(6, False, 0.3), rec(5, True, 0.9)],
        # no answer in the first sample; pass@4 but never voted
        [rec(None, False, None), rec(1, False, 0.8), rec(2, True, 0.1), rec(1, False, 0.5)],
        # nothing extracted at all
        [rec(None, False), rec(None, False), rec(None, False), rec(None, False)],
    ]
    rows = at_k_accuracy(questions, [4, 1, 2], score_key="orm_score")
    table = {(r["method"], r["k"]): r["accuracy"] for r in rows}
    assert [(r["method"], r["k"]) for r in rows] == [
        ("voting", 1),
        ("voting", 2),
        ("voting", 4),
        ("rerank", 1),
        ("rerank", 2),
        ("rerank", 4),
        ("pass", 1),
        ("pass", 2),
        ("pass", 4),
    ]
    assert table[("voting", 1)] == pytest.approx(1 / 3)  # question 0's first sample is right
    assert table[("voting", 2)] == pytest.approx(1 / 3)  # 5 vs 6 tie -> 5 (seen first)
    assert table[("voting", 4)] == pytest.approx(1 / 3)  # 5:2, 6:2 -> 5; question 1: 1 wins 2-1
    assert table[("rerank", 1)] == pytest.approx(1 / 3)
    assert table[("rerank", 2)] == pytest.approx(0.0)  # 0.2 > 0.1 picks the wrong 6; q1 only has 1 (0.8)
    assert table[("rerank", 4)] == pytest.approx(1 / 3)  # 0.9 -> the right 5; q1: 0.8 -> wrong
    assert table[("pass", 4)] == pytest.approx(2 / 3)
    assert all(r["n"] == 3 for r in rows)
    assert {r["method"] for r in at_k_accuracy(questions, [1])} == {"voting", "pass"}  # no scores: no rerank
    with pytest.raises(ValueError, match="k=5 must be between 1 and 4"):
        at_k_accuracy(questions, [5])
    with pytest.raises(ValueError, match="no questions"):
        at_k_accuracy([], [1])


def test_default_ks():
    assert default_ks(100) == [1, 4, 16, 64, 100]
    assert default_ks(16) == [1, 4, 16]
    assert default_ks(1) == [1]
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        default_ks(0)


# ----------------------------------------------------------------------------------------------- sharded sampling


SMALL_TASK = TaskConfig(n_train=10, n_test_iid=8, n_test_ood=8)


@pytest.fixture(scope="module")
def rows():
    return list(load_synthetic("train", config=SMALL_TASK, seed=0, cot="nl", kind="rl"))


class CannedSampler:
    """Deterministic completions per question, known to be correct / wrong / unparsable; counts its calls."""

    def __init__(self, rows, pattern=("right", "wrong", "right", "none")):
        self.gold = {row["prompt"]: row["answer"] for row in rows}
        self.pattern = pattern
        self.calls: list[dict] = []

    def completion(self, gold: str, kind: str, s: int) -> str:
        if kind == "right":
            return f"step {s}\n{TRIGGER}{gold}"
        if kind == "wrong":
            return f"step {s}\n{TRIGGER}{int(gold) + 1}"
        return f"step {s}: no idea"

    def __call__(self, prompts, *, num_samples, do_sample, seed):
        self.calls.append({"n": len(prompts), "num_samples": num_samples, "do_sample": do_sample, "seed": seed})
        return [
            [self.completion(self.gold[p], self.pattern[s % len(self.pattern)], s) for s in range(num_samples)]
            for p in prompts
        ]


def test_sample_to_shards_writes_graded_records_per_shard(rows, tmp_path):
    sampler = CannedSampler(rows)
    stats = sample_to_shards(rows, tmp_path, sampler, num_samples=4, shard_size=4, seed=10, progress=False)
    assert stats == {"shards": 3, "skipped": 0, "sampled": 3}
    assert [c["n"] for c in sampler.calls] == [4, 4, 2]
    assert [c["seed"] for c in sampler.calls] == [10, 11, 12]  # shard i: seed + i
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [f"shard-0000{i}.jsonl" for i in range(3)]
    records = read_samples(tmp_path)
    assert len(records) == 40
    assert [(r["question_index"], r["sample_index"]) for r in records[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert [r["status"] for r in records[:4]] == ["correct", "wrong", "correct", "unparsable"]
    assert records[0]["answer"] == float(rows[0]["answer"]) and records[3]["answer"] is None
    assert records[1]["answer"] == float(rows[0]["answer"]) + 1 and records[1]["correct"] is False
    assert all(r["item_id"] == rows[r["question_index"]]["item_id"] for r in records)
    groups = group_by_question(records, len(rows))
    assert [len(g) for g in groups] == [4] * 10


def test_resuming_skips_complete_shards_and_redoes_a_half_written_one(rows, tmp_path):
    sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=4, shard_size=4, progress=False)
    before = read_samples(tmp_path)
    # Shard 1 was cut in the middle of a write, and the run died while writing shard 2 (a leftover .tmp).
    lines = shard_path(tmp_path, 1).read_text().splitlines()
    shard_path(tmp_path, 1).write_text("\n".join(lines[:6]) + '\n{"question_index": 5, "sampl')
    shard_path(tmp_path, 2).rename(tmp_path / "shard-00002.jsonl.tmp")
    with pytest.raises(ValueError, match="shard-00001.jsonl, shard-00002.jsonl"):
        read_samples(tmp_path)
    sampler = CannedSampler(rows)
    stats = sample_to_shards(rows, tmp_path, sampler, num_samples=4, shard_size=4, progress=False)
    assert stats == {"shards": 3, "skipped": 1, "sampled": 2}
    assert [(c["n"], c["seed"]) for c in sampler.calls] == [(4, 1), (2, 2)]  # only shards 1 and 2
    assert read_samples(tmp_path) == before  # same seeds, same samples as the uninterrupted run
    # Everything complete: nothing is sampled and the lazy sampler never builds a model.
    built = []
    lazy = LazySampler(lambda: built.append(1))
    assert sample_to_shards(rows, tmp_path, lazy, num_samples=4, shard_size=4, progress=False)["sampled"] == 0
    assert built == []


def test_a_shard_with_other_questions_is_redone(rows, tmp_path):
    sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=2, shard_size=5, progress=False)
    records = [json.loads(line) for line in shard_path(tmp_path, 0).read_text().splitlines()]
    records[0]["item_id"] = "someone_else"
    shard_path(tmp_path, 0).write_text("".join(json.dumps(r) + "\n" for r in records))
    sampler = CannedSampler(rows)
    sample_to_shards(rows, tmp_path, sampler, num_samples=2, shard_size=5, progress=False)
    assert [c["seed"] for c in sampler.calls] == [0]


def test_resuming_with_other_settings_is_refused(rows, tmp_path):
    settings_ = {"model": "a", "temperature": 1.0}
    sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=2, settings=settings_, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(model: 'a' -> 'b'\)"):
        sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=2, settings={**settings_, "model": "b"})
    with pytest.raises(ValueError, match="num_samples: 2 -> 3"):
        sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=3, settings=settings_)
    with pytest.raises(ValueError, match="fingerprint"):
        sample_to_shards(rows[:5], tmp_path, CannedSampler(rows), num_samples=2, settings=settings_)


def test_processes_sample_disjoint_shards(rows, tmp_path):
    samplers = [CannedSampler(rows), CannedSampler(rows)]
    for rank, sampler in enumerate(samplers):
        sample_to_shards(rows, tmp_path, sampler, num_samples=1, shard_size=3, rank=rank, world_size=2, progress=False)
    assert [c["seed"] for c in samplers[0].calls] == [0, 2] and [c["seed"] for c in samplers[1].calls] == [1, 3]
    assert len(read_samples(tmp_path)) == 10


def test_sample_to_shards_rejects_bad_input(rows, tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        sample_to_shards([], tmp_path, CannedSampler(rows), num_samples=1)
    with pytest.raises(ValueError, match=r"columns \['answer'\]"):
        sample_to_shards([{"prompt": "x"}], tmp_path, CannedSampler(rows), num_samples=1)
    with pytest.raises(ValueError, match="use num_samples=1"):
        sample_to_shards(rows, tmp_path, CannedSampler(rows), num_samples=2, do_sample=False)

    def short(prompts, **kwargs):
        return [["only one"] for _ in prompts]

    with pytest.raises(ValueError, match="expected 3 per prompt"):
        sample_to_shards(rows, tmp_path / "short", short, num_samples=3, progress=False)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        read_samples(tmp_path / "nowhere")


def test_p_cot_samples_are_program_bodies_graded_as_whole_programs():
    question = "Mia has 3 apples and buys 4 more. How many apples does she have?"
    row = {
        "prompt": f"Question:\n{question}\nAnswer reasoning:\n{python_header(question)}",
        "completion_prefix": python_header(question),
        "answer": "7",
        "answer_format": "numeric",
        "cot": "python",
        "item_id": "q0",
    }
    bodies = ["    apples = 3 + 4\n    return apples", "    return 8", "    return undefined_name"]
    records = grade_samples([row], [bodies])
    assert [r["completion"] for r in records] == bodies  # stored exactly as generated
    assert [(r["answer"], r["status"]) for r in records] == [(7, "correct"), (8, "wrong"), (None, "unparsable")]


# -------------------------------------------------------------------------------------------- recipes/evaluate.py


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    tok = char_tokenizer()
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def eval_args(recipe, tmp_path, model_dir, *extra):
    config = tmp_path / "data.yaml"
    config.write_text(
        "dataset: synthetic\ntask_config: {n_train: 8, n_test_iid: 8, n_test_ood: 8}\neval_split: test_iid\n"
    )
    from trl import TrlParser

    parser = TrlParser((DataArguments, recipe.EvaluateArguments))
    return parser.parse_args_and_config(
        ["--config", str(config), "--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "eval")]
        + ["--max_new_tokens", "16", "--disable_tqdm", "true", *extra]
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_recipe_end_to_end_with_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch, load_recipe):
    recipe = load_recipe("evaluate")
    data_args, args = eval_args(recipe, tmp_path, tiny_model_dir, "--num_samples", "4", "--batch_size", "3")
    summary = recipe.main(data_args, args)
    out = tmp_path / "eval"
    samples = read_jsonl(out / "samples.jsonl")
    greedy = read_jsonl(out / "greedy.jsonl")
    assert len(samples) == 8 * 4 and len(greedy) == 8
    assert {(s["question_index"], s["sample_index"]) for s in samples} == {(q, s) for q in range(8) for s in range(4)}
    assert all(isinstance(s["completion"], str) and s["status"] in {"correct", "wrong", "unparsable"} for s in samples)
    assert len({s["completion"] for s in samples}) > 1  # sampled, not greedy copies
    # The results table agrees with the JSONL.
    results = {(r["method"], r["k"]): r["accuracy"] for r in json.loads((out / "results.json").read_text())["results"]}
    assert results == {(r["method"], r["k"]): r["accuracy"] for r in summary["results"]}
    assert set(results) == {("greedy", 1), ("mean", 4)} | {(m, k) for m in ("voting", "pass") for k in (1, 4)}
    assert results[("greedy", 1)] == sum(g["correct"] for g in greedy) / 8
    assert results[("mean", 4)] == sum(s["correct"] for s in samples) / 32
    groups = group_by_question(samples, 8)
    for k in (1, 4):
        votes = [majority_vote_index(g[:k]) for g in groups]
        assert results[("voting", k)] == sum(v is not None and g[v]["correct"] for v, g in zip(votes, groups)) / 8
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("| method | k | accuracy |") and "| voting | 4 |" in markdown
    # A rerun finds every shard complete: no model is loaded, nothing is sampled, the same samples come out.
    monkeypatch.setattr(
        samplers_module, "build_sampler", lambda *a, **k: pytest.fail("a complete run must not sample again")
    )
    recipe.main(data_args, args)
    assert read_jsonl(out / "samples.jsonl") == samples


def test_evaluate_recipe_numbers_with_known_completions_and_an_orm(tiny_model_dir, tmp_path, monkeypatch, load_recipe):
    recipe = load_recipe("evaluate")
    from reft_trl.trainers.orm import load_orm, load_orm_tokenizer

    orm_dir = tmp_path / "orm"
    tokenizer = load_orm_tokenizer(str(tiny_model_dir))
    load_orm(str(tiny_model_dir), tokenizer).save_pretrained(orm_dir)
    tokenizer.save_pretrained(orm_dir)
    data_args, args = eval_args(
        recipe,
        tmp_path,
        tiny_model_dir,
        "--num_samples",
        "4",
        "--ks",
        "1",
        "2",
        "4",
        "--orm_model_name_or_path",
        str(orm_dir),
    )
    test_rows = list(data_args.eval_dataset(data_args.task()))
    # Greedy: right on even questions. Samples: questions 0-3 get (right, wrong, right, none) -> vote right;
    # questions 4-7 get (wrong, wrong, right, none) -> vote wrong, pass@4 right.
    greedy = CannedSampler(test_rows, pattern=("right",))
    canned = {q: CannedSampler(test_rows, ("right", "wrong", "right", "none")) for q in range(4)}
    canned |= {q: CannedSampler(test_rows, ("wrong", "wrong", "right", "none")) for q in range(4, 8)}
    index = {row["prompt"]: q for q, row in enumerate(test_rows)}

    def sampler(prompts, *, num_samples, do_sample, seed):
        if not do_sample:
            return [
                greedy([p], num_samples=1, do_sample=False, seed=seed)[0] if index[p] % 2 == 0 else ["?"]
                for p in prompts
            ]
        return [canned[index[p]]([p], num_samples=num_samples, do_sample=True, seed=seed)[0] for p in prompts]

    monkeypatch.setattr(samplers_module, "build_sampler", lambda *a, **k: sampler)
    summary = recipe.main(data_args, args)
    results = {(r["method"], r["k"]): r["accuracy"] for r in summary["results"]}
    assert results[("greedy", 1)] == 0.5
    assert results[("voting", 4)] == 0.5 and results[("pass", 4)] == 1.0
    assert results[("voting", 1)] == 0.5 and results[("pass", 1)] == 0.5
    assert results[("mean", 4)] == pytest.approx((4 * 2 + 4 * 1) / 32)
    samples = read_jsonl(tmp_path / "eval" / "samples.jsonl")
    assert all((s["orm_score"] is None) == (s["answer"] is None) for s in samples)
    assert all(0.0 <= s["orm_score"] <= 1.0 for s in samples if s["answer"] is not None)
    # rerank@k agrees with the ORM scores written to the JSONL.
    for k in (1, 2, 4):
        picks = [(rerank_index([s["orm_score"] for s in g[:k]], g[:k]), g) for g in group_by_question(samples, 8)]
        expected = sum(p is not None and g[p]["correct"] for p, g in picks) / 8
        assert results[("rerank", k)] == pytest.approx(expected)
    assert "| rerank | 4 |" in (tmp_path / "eval" / "results.md").read_text()


def test_evaluate_recipe_rejects_bad_arguments(tmp_path, tiny_model_dir, load_recipe):
    recipe = load_recipe("evaluate")
    with pytest.raises(ValueError, match="backend='tpu'"):
        recipe.EvaluateArguments(model_name_or_path="m", backend="tpu")
    with pytest.raises(ValueError, match="every k must be between 1 and num_samples=4"):
        recipe.EvaluateArguments(model_name_or_path="m", num_samples=4, ks=[8])
    with pytest.raises(ValueError, match="needs samples"):
        recipe.EvaluateArguments(model_name_or_path="m", num_samples=0, orm_model_name_or_path="orm")
    with pytest.raises(ValueError, match="--model_name_or_path is required"):
        recipe.main(DataArguments(dataset="synthetic"), recipe.EvaluateArguments())


# ------------------------------------------------------------------------------------------- report.py's merged table
def test_report_merges_the_largest_k_of_each_evaluation(tmp_path, load_recipe):
    report = load_recipe("report")
    results = {
        label: {"path": label, "scores": {"test": {"accuracy": acc, "unparsable": 0.0, "n": 4}}}
        for label, acc in (("SFT", 0.5), ("ReFT", 0.75))
    }
    for s in results.values():
        s["scores"]["all"] = s["scores"]["test"]
    rows = [
        {"method": "greedy", "k": 1, "accuracy": 0.5, "n": 4},
        {"method": "voting", "k": 1, "accuracy": 0.25, "n": 4},
        {"method": "voting", "k": 4, "accuracy": 1.0, "n": 4},
        {"method": "rerank", "k": 4, "accuracy": 0.75, "n": 4},
        {"method": "mean", "k": 4, "accuracy": 0.1, "n": 4},
    ]
    (tmp_path / "results.json").write_text(json.dumps({"split": "test", "n_questions": 4, "results": rows}))

    columns = report.attach_evaluations(results, {"ReFT": str(tmp_path)})
    assert columns == ["voting@4", "rerank@4"]
    assert results["ReFT"]["evaluation"]["voting@4"] == 1.0 and "evaluation" not in results["SFT"]
    table = report.markdown_table(results, ["test"], columns).splitlines()
    assert table[0] == "| model | test (n=4) | all (n=4) | voting@4 | rerank@4 |"
    assert table[2] == "| SFT | 50.0 | 50.0 |  |  |"
    assert table[3] == "| ReFT | 75.0 | 75.0 | 100.0 | 75.0 |"
    with pytest.raises(ValueError, match="no --run is labelled 'Online-ST'"):
        report.attach_evaluations(results, {"Online-ST": str(tmp_path)})


def test_report_aggregates_runs_over_seeds(load_recipe):
    report = load_recipe("report")

    def scores(test, ood):
        return {
            "test": {"accuracy": test, "unparsable": 0.1, "n": 4},
            "ood": {"accuracy": ood, "unparsable": 0.0, "n": 4},
            "all": {"accuracy": (test + ood) / 2, "unparsable": 0.05, "n": 8},
        }

    per_seed = [scores(0.5, 0.75), scores(0.75, 0.75), scores(1.0, 0.5)]
    stats = report.seed_statistics(per_seed)
    assert stats["test"]["accuracy"] == pytest.approx(0.75) and stats["test"]["std"] == pytest.approx(0.25)
    assert stats["ood"]["values"] == [0.75, 0.75, 0.5] and stats["all"]["n"] == 8
    assert stats["all"]["accuracy"] == pytest.approx((0.625 + 0.75 + 0.75) / 3)
    assert stats["test"]["unparsable"] == pytest.approx(0.1)

    results = {
        "Warm-up": {"path": "w", "scores": scores(0.25, 0.25)},
        "ReFT": {"paths": ["a", "b", "c"], "per_seed": per_seed, "scores": stats},
    }
    table = report.markdown_table(results, ["test", "ood"]).splitlines()
    assert table[0] == "| model | test (n=4) | ood (n=4) | all (n=8) | all, each seed |"
    assert table[1] == "|---|---|---|---|---|"
    assert table[2] == "| Warm-up | 25.0 | 25.0 | 25.0 |  |"
    assert table[3] == "| ReFT | 75.0 ± 25.0 | 66.7 ± 14.4 | 70.8 ± 7.2 | 62.5 / 75.0 / 75.0 |"
    # One run per label keeps the single-seed table unchanged.
    assert report.markdown_table({"Warm-up": results["Warm-up"]}, ["test", "ood"]).splitlines()[0].endswith("(n=8) |")

    runs = report._runs(["ReFT=a,b,c", "SFT=d"])
    assert runs == {"ReFT": ["a", "b", "c"], "SFT": ["d"]}
    with pytest.raises(ValueError, match="--run ReFT=: no model path"):
        report._runs(["ReFT=,"])


def test_report_seed_curve_pairs_the_ith_evaluation_of_every_seed(load_recipe):
    report = load_recipe("report")
    histories = [
        [{"step": 10, "eval_accuracy": 0.5}, {"step": 20, "eval_accuracy": 0.6}, {"step": 20, "loss": 1.0}],
        [{"step": 10, "eval_accuracy": 0.7}, {"step": 20, "eval_accuracy": 0.8}, {"step": 30, "eval_accuracy": 0.9}],
    ]
    steps, mean, low, high = report.seed_curve(histories, "eval_accuracy", shift=100, scale=100)
    assert steps == [110, 120]
    assert mean == pytest.approx([60.0, 70.0]) and low == pytest.approx([50.0, 60.0])
    assert high == pytest.approx([70.0, 80.0])
    assert report.seed_curve(histories, "reward") is None
    # An epoch-end evaluation one step apart between seeds (their datasets differ in size) is still one point.
    steps, mean, _, _ = report.seed_curve(
        [[{"step": 141, "eval_accuracy": 0.6}], [{"step": 142, "eval_accuracy": 0.7}]], "eval_accuracy"
    )
    assert steps == [141.5] and mean == pytest.approx([0.65])


def test_report_step_time_excludes_evaluations(load_recipe, tmp_path):
    report = load_recipe("report")
    history = [
        {"step": 50, "eval_accuracy": 0.5, "eval_runtime": 10.0},
        {"step": 100, "eval_accuracy": 0.6, "eval_runtime": 12.0},
        {"step": 100, "train_runtime": 222.0},
    ]
    assert report.seconds_per_step(history) == pytest.approx((222.0 - 22.0) / 100)
    assert report.seconds_per_step(history[:2]) is None  # not a finished run
    run = tmp_path / "run"
    run.mkdir()
    (run / "log_history.json").write_text(json.dumps(history))
    results = {
        "ReFT": {"path": str(run), "scores": {"test": {"accuracy": 0.5, "n": 2}, "all": {"accuracy": 0.5, "n": 2}}}
    }
    columns = report.attach_step_times(results)
    assert report.markdown_table(results, ["test"], columns).splitlines()[-1] == "| ReFT | 50.0 | 50.0 | 2.00 |"


def test_report_curve_of_a_run_from_a_checkpoint_starts_at_that_checkpoint(load_recipe, tmp_path):
    """ReFT starts from the warm-up's step-500 checkpoint (offset 500): its accuracy curve starts at the warm-up's
    evaluation of step 500, then follows its own evaluations (shifted); its reward curve has no such point."""
    report = load_recipe("report")
    sft, reft = tmp_path / "sft", tmp_path / "reft"
    for folder, history in (
        (sft, [{"step": 250, "eval_accuracy": 0.4}, {"step": 500, "eval_accuracy": 0.55}]),
        (reft, [{"step": 10, "reward": 0.3}, {"step": 50, "eval_accuracy": 0.7}, {"step": 100, "eval_accuracy": 0.8}]),
    ):
        folder.mkdir()
        (folder / "log_history.json").write_text(json.dumps(history))
    (sft / "checkpoint-500").mkdir()
    continued = tmp_path / "sft-continued"  # also shifted, and it evaluates at its own step 500: not a starting point
    continued.mkdir()
    (continued / "log_history.json").write_text(json.dumps([{"step": 500, "eval_accuracy": 0.66}]))
    runs = {"Warm-up": [str(sft / "checkpoint-500")], "SFT continued": [str(continued)], "ReFT": [str(reft)]}
    drawn = report.curves(runs, {"ReFT": "500", "SFT continued": "500"})
    steps, mean, low, high = drawn["ReFT"]["eval_accuracy"]
    assert steps == [500, 550, 600] and mean == pytest.approx([55.0, 70.0, 80.0])
    assert low[0] == high[0] == pytest.approx(55.0)
    assert drawn["ReFT"]["reward"][0] == [510]
    assert drawn["Warm-up"]["eval_accuracy"][0] == [250, 500]
    assert report.plot_curves({"ReFT": [str(reft)]}, {"ReFT": "500"}, tmp_path / "c.png", "t")  # no warm-up: as before
