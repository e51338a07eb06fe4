"""The ReFT reward (reft_trl.rewards.scoring): scoring, the P-CoT path through the sandbox, and the TRL callable."""

from __future__ import annotations

import doctest
import json
import pickle
import subprocess
import sys

import pytest

import reft_trl.rewards
from reft_trl import sandbox
from reft_trl.rewards import (
    AnswerFormat,
    AnswerReward,
    Outcome,
    extractors,
    grade_completions,
    program_text,
    register_answer_format,
    run_programs,
    score_completion,
    score_completions,
)

TRIGGER = "Therefore, the answer is:"
HEADER = 'def solution():\n    """What is 3 + 4?"""\n'


def nl(answer: str) -> str:
    return f"3 + 4 = 7.\n{TRIGGER} {answer}"


def program(body: str) -> str:
    return HEADER + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.fixture
def registry(monkeypatch):
    """Register formats into a copy of the registry, dropped after the test."""
    monkeypatch.setattr(extractors, "_REGISTRY", dict(extractors._REGISTRY))


@pytest.fixture
def program_calls(monkeypatch):
    """Record every batch of programs sent to the (real) sandbox."""
    calls: list[list[str]] = []
    real = sandbox.run_programs

    def spy(programs, timeout=None, *, pool=None):
        calls.append(list(programs))
        return real(programs, timeout, pool=pool)

    monkeypatch.setattr(sandbox, "run_programs", spy)
    return calls


def test_public_names_and_light_import():
    for name in ("score_completion", "score_completions", "run_programs", "AnswerReward", "AnswerFormat"):
        assert name in reft_trl.rewards.__all__
    assert run_programs is sandbox.run_programs
    code = (
        "import sys, reft_trl.rewards\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_docstring_examples():
    results = doctest.testmod(reft_trl.rewards)
    assert results.attempted >= 2 and results.failed == 0


# ------------------------------------------------------------------------------------------ N-CoT scoring


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (nl("7"), "7", 1.0),
        (nl("7.0"), "7", 1.0),
        (nl("7.005"), "7", 1.0),  # within the 1e-2 absolute tolerance
        (nl("$1,000"), "1000", 1.0),
        (nl("1000"), "1,000", 1.0),  # gold cleaned like the answer
        (nl("8"), "7", 0.1),
        (nl("7.02"), "7", 0.1),
        (nl("seven"), "7", 0.0),
        (nl("nan"), "7", 0.0),
        (nl("inf"), "7", 0.0),
        (nl(""), "7", 0.0),
        ("3 + 4 = 7", "7", 0.0),  # no trigger
        ("3 + 4 = 7\n#### 7", "7", 1.0),  # GSM8K's native final line
    ],
)
def test_numeric_reward(completion, gold, expected):
    assert score_completion(completion, gold) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (nl("c"), "c", 1.0),
        (nl("(C)"), "c", 1.0),
        (nl("c ) 38"), "C", 1.0),
        (nl("d"), "c", 0.1),
        (nl("c or d"), "c", 0.0),  # hedging earns nothing (the reference gives 0.1)
        (nl("a, b, c, d, e"), "c", 0.0),
        (nl("c/d"), "c", 0.0),
        ("the answer is c", "c", 0.0),  # no trigger (the reference gives 0.1)
        (nl("38"), "c", 0.0),
    ],
)
def test_multiple_choice_reward(completion, gold, expected):
    assert score_completion(completion, gold, answer_format="multiple_choice") == expected


def test_partial_reward_is_configurable():
    assert score_completion(nl("8"), "7", partial_reward=0.0) == 0.0  # the paper's ablation
    assert score_completion(nl("8"), "7", partial_reward=0.25) == 0.25
    assert score_completion(nl("7"), "7", partial_reward=0.0) == 1.0
    assert score_completion(nl("x"), "7", partial_reward=0.25) == 0.0
    assert score_completion(nl("d"), "c", answer_format="multiple_choice", partial_reward=0.0) == 0.0


def test_tolerances():
    assert score_completion(nl("1,000,050"), "1000000") == 0.1
    assert score_completion(nl("1,000,050"), "1000000", rel_tol=1e-4) == 1.0
    assert score_completion(nl("7.005"), "7", abs_tol=1e-3) == 0.1
    assert score_completion(nl("c"), "c", answer_format="multiple_choice", rel_tol=0.5) == 1.0  # ignored there
    assert score_completion(nl("7.005"), "7", answer_format=extractors.numeric_format(abs_tol=1e-3)) == 0.1


def test_per_item_formats_and_lists():
    completions = [nl("7"), nl("c"), nl("8"), nl("a or c")]
    golds = ["7", "c", "7", "c"]
    formats = ["numeric", "multiple_choice", "numeric", "multiple_choice"]
    assert score_completions(completions, golds, answer_format=formats) == [1.0, 1.0, 0.1, 0.0]
    outcomes = grade_completions(completions, golds, answer_format=formats)
    assert outcomes[0] == Outcome(7.0, "correct", 1.0)
    assert outcomes[2] == Outcome(8.0, "wrong", 0.1)
    assert outcomes[3] == Outcome(None, "unparsable", 0.0)
    assert score_completions([], []) == []


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"Unknown answer_format 'latex'.*'multiple_choice', 'numeric'"):
        score_completion(nl("7"), "7", answer_format="latex")
    with pytest.raises(ValueError, match=r"Unknown cot 'code'.*'nl', 'python'"):
        score_completion(nl("7"), "7", cot="code")
    with pytest.raises(ValueError, match="item 1.*'seven'"):
        score_completions([nl("7"), nl("7")], ["7", "seven"])
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        score_completions([nl("7"), nl("7")], ["7"])
    with pytest.raises(ValueError, match="answer_format has 1 entries but there are 2"):
        score_completions([nl("7"), nl("7")], ["7", "7"], answer_format=["numeric"])
    with pytest.raises(TypeError, match="Completion 0 is a list"):
        score_completions([["7"]], ["7"])


def test_reward_golden_records(goldens):
    """Every correct completion from real annotated data scores 1, as in the reference (P-CoT through the sandbox)."""
    records = json.loads((goldens / "reward_real_data_dev.json").read_text())
    formats = {"gsm8k": "numeric", "svamp": "numeric", "mathqa-numeric": "numeric", "mathqa": "multiple_choice"}
    assert {r["format"] for r in records} == {"nl", "python"}
    rewards = score_completions(
        [r["completion"] for r in records],
        [r["gold"] for r in records],
        answer_format=[formats[r["dataset"]] for r in records],
        cot=[r["format"] for r in records],
    )
    wrong = [(r["id"], reward) for r, reward in zip(records, rewards) if reward != 1.0]
    assert not wrong
    assert all(r["reward"] == 1 for r in records)


# ------------------------------------------------------------------------------------------ P-CoT scoring


@pytest.mark.parametrize(
    ("body", "gold", "answer_format", "expected"),
    [
        ("return 3 + 4", "7", "numeric", 1.0),
        ("return 7.001", "7", "numeric", 1.0),
        ("return math.sqrt(49)", "7", "numeric", 1.0),  # math is pre-imported by the sandbox
        ("return 8", "7", "numeric", 0.1),
        ("return '1,000'", "1000", "numeric", 1.0),  # string results are parsed like N-CoT answers
        ("return '$7 dollars'", "7", "numeric", 1.0),
        ("return 'seven'", "7", "numeric", 0.0),
        ("return float('nan')", "7", "numeric", 0.0),
        ("return float('inf')", "7", "numeric", 0.0),
        ("return True", "1", "numeric", 0.0),
        ("return [7]", "7", "numeric", 0.0),
        ("return None", "7", "numeric", 0.0),
        ("raise ValueError('boom')", "7", "numeric", 0.0),
        ("return 1 / 0", "7", "numeric", 0.0),
        ("return 'C'", "c", "multiple_choice", 1.0),
        ("return 'd'", "c", "multiple_choice", 0.1),
        ("return 'c or d'", "c", "multiple_choice", 0.0),
        ("return 3.0", "c", "multiple_choice", 0.0),
    ],
)
def test_python_reward(body, gold, answer_format, expected):
    assert score_completion(program(body), gold, answer_format=answer_format, cot="python") == expected


def test_python_syntax_error_scores_zero():
    assert score_completion("def solution(:\n    return 7\n", "7", cot="python") == 0.0


def test_python_batch_is_one_sandbox_call_in_order(program_calls):
    n = 6
    programs = [program(f"return {i} * 10") for i in range(n)]
    golds = [str(i * 10) for i in range(n)]
    assert score_completions(programs, golds, cot="python") == [1.0] * n
    assert score_completions(programs, golds[::-1], cot="python") == [0.1] * n
    assert program_calls == [programs, programs]


def test_mixed_batch_runs_only_the_programs(program_calls):
    completions = [nl("7"), program("return 7"), nl("8"), program("return 'x'")]
    rewards = score_completions(completions, ["7"] * 4, cot=["nl", "python", "nl", "python"])
    assert rewards == [1.0, 1.0, 0.1, 0.0]
    assert program_calls == [[completions[1], completions[3]]]
    assert score_completions([nl("7")], ["7"]) == [1.0]
    assert len(program_calls) == 1  # no sandbox call without programs


def test_python_nl_text_is_never_executed(program_calls):
    """An N-CoT completion that happens to be a program is read as text, not run."""
    assert score_completion(program("return 7"), "7", cot="nl") == 0.0
    assert program_calls == []


# ------------------------------------------------------------------------------------------ user formats


def _always_x(text: str) -> str:
    return "x"


def test_user_registered_format_end_to_end(registry):
    def last_word(text: str) -> str | None:
        words = text.split()
        return words[-1].strip(".").lower() if words else None

    register_answer_format(AnswerFormat(name="last_word", extract=last_word, parse_gold=lambda g: g.lower()))
    assert score_completion("the colour is Blue.", "blue", answer_format="last_word") == 1.0
    assert score_completion("the colour is red.", "blue", answer_format="last_word") == 0.1
    assert score_completion("", "blue", answer_format="last_word") == 0.0
    assert score_completion(program("return ' Blue '"), "Blue", answer_format="last_word", cot="python") == 0.1
    assert score_completion(program("return 'blue'"), "Blue", answer_format="last_word", cot="python") == 1.0
    reward = AnswerReward("last_word")
    assert reward(["q1", "q2"], ["it is blue", "it is red"], answer=["Blue", "blue"]) == [1.0, 0.1]
    assert reward(["q"], ["it is blue"], answer=["red"], answer_format=["last_word"]) == [0.1]


def test_registered_format_goes_through_loading_reward_and_evaluation(registry, tmp_path, monkeypatch):
    """A format registered by the user works in the loaders (gold parsed and written by the format), the reward
    (AnswerReward reading the rows' columns) and evaluation (grade_rows / answer_accuracy), N-CoT and P-CoT."""
    from reft_trl.data import DataValidationError, from_records, load_mwp
    from reft_trl.evaluation import accuracy as accuracy_module
    from reft_trl.evaluation import answer_accuracy, grade_rows

    def last_word(text: str) -> str | None:
        words = text.split()
        return words[-1].strip(".").lower() if words else None

    def parse_colour(gold):
        if not isinstance(gold, str) or not gold.strip().isalpha():
            raise ValueError(f"Cannot parse the gold answer {gold!r} as a colour.")
        return gold.strip().lower()

    register_answer_format(
        AnswerFormat(
            name="colour", extract=last_word, parse_gold=parse_colour, gold_text=parse_colour, from_program=last_word
        )
    )
    raw = [
        {"item_id": "c1", "question": "Sky?", "answer_cot": "The sky is blue.", "answer_value": " Blue "},
        {"item_id": "c2", "question": "Grass?", "answer_cot": "Grass is green.", "answer_value": "green"},
    ]
    sft = from_records(raw, dataset="colours", answer_format="colour", kind="sft")
    assert sft[0]["answer"] == "blue" and sft[0]["completion"] == "The sky is blue.\nTherefore, the answer is: blue"
    path = tmp_path / "colours_test_set.json"
    path.write_text(json.dumps(raw))
    rl = load_mwp(path, dataset="colours", answer_format="colour", kind="rl")
    assert rl["answer"] == ["blue", "green"] and rl["answer_format"] == ["colour", "colour"]
    with pytest.raises(DataValidationError, match=r"row c3, field 'answer_value'.*'colour'.*as a colour"):
        from_records([{**raw[0], "item_id": "c3", "answer_value": "42"}], dataset="colours", answer_format="colour")
    with pytest.raises(ValueError, match="Unknown answer_format 'shade'"):
        from_records(raw, dataset="colours", answer_format="shade")

    completions = ["it is blue", "it is red", ""]
    rows = [rl[0], rl[1], rl[1]]
    columns = {k: [r[k] for r in rows] for k in ("answer", "answer_format", "cot", "completion_prefix")}
    assert AnswerReward()([r["prompt"] for r in rows], completions, **columns) == [1.0, 0.1, 0.0]
    assert [o.reward for o in grade_rows(rows, completions)] == [1.0, 0.1, 0.0]
    canned = dict(zip([r["prompt"] for r in rl], ["blue", "red"]))
    monkeypatch.setattr(
        accuracy_module, "generate_completions", lambda m, t, prompts, **kw: [[canned[p]] for p in prompts]
    )
    assert answer_accuracy(None, None, rl, progress=False) == {"accuracy": 0.5, "unparsable": 0.0, "n": 2}

    # P-CoT: the program (completion_prefix + body) runs in the sandbox, its value read by from_program
    py = from_records(raw[:1], dataset="colours", answer_format="colour", kind="rl", cot="python")
    body = ["    return 'Blue'\n", "    return 'red'\n"]
    assert [o.reward for o in grade_rows([py[0], py[0]], body)] == [1.0, 0.1]


# ------------------------------------------------------------------------------------------ TRL callable


def test_answer_reward_plain_completions_and_outcomes():
    reward = AnswerReward()
    assert reward.__name__ == "answer_reward"
    rewards = reward(["p"] * 3, [nl("7"), nl("8"), "no idea"], answer=["7", "7", "7"])
    assert rewards == [1.0, 0.1, 0.0]
    assert [o.status for o in reward.last_outcomes] == ["correct", "wrong", "unparsable"]
    assert [o.answer for o in reward.last_outcomes] == [7.0, 8.0, None]


def test_answer_reward_conversational_completions():
    prompts = [[{"role": "user", "content": "What is 3 + 4?"}]] * 3
    completions = [
        [{"role": "assistant", "content": nl("7")}],
        [
            {"role": "assistant", "content": nl("1")},
            {"role": "tool", "content": "x"},
            {"role": "assistant", "content": nl("7")},
        ],
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "3 + 4 = 7.\n"}, {"type": "text", "text": nl("8")}],
            }
        ],
    ]
    assert AnswerReward()(prompts, completions, answer=["7", "7", "7"]) == [1.0, 1.0, 0.1]


def test_answer_reward_per_row_columns_override_defaults():
    reward = AnswerReward("numeric", "nl")
    completions = [nl("c"), nl("7"), program("return 'c'"), nl("7")]
    rewards = reward(
        ["p"] * 4,
        completions,
        answer=["c", "7", "c", "7"],
        answer_format=["multiple_choice", "numeric", "multiple_choice", None],  # None: the default
        cot=["nl", "nl", "python", None],
    )
    assert rewards == [1.0, 1.0, 1.0, 1.0]
    assert AnswerReward("multiple_choice")(["p"], [nl("c")], answer=["c"]) == [1.0]
    assert AnswerReward()(["p"], [nl("c")], answer=["7"]) == [0.0]  # numeric default: no number


def test_answer_reward_custom_columns_and_errors():
    reward = AnswerReward(answer_column="gold", format_column="kind", cot_column="style", name="math_reward")
    assert reward.__name__ == "math_reward"
    assert reward(["p"], [nl("c")], gold=["c"], kind=["multiple_choice"], style=["nl"]) == [1.0]
    with pytest.raises(KeyError, match=r"no 'gold' column.*\['answer'\]"):
        reward(["p"], [nl("7")], answer=["7"])
    with pytest.raises(ValueError, match="Unknown answer_format 'latex'"):
        AnswerReward("latex")
    with pytest.raises(ValueError, match="Unknown cot 'code'"):
        AnswerReward(cot="code")


def test_answer_reward_rebuilds_programs_from_the_prompt_header_or_completion_prefix(program_calls):
    question_prompt = "Question:\nWhat is 3 + 4?\nAnswer reasoning:\n"
    prompts = [
        question_prompt + HEADER,
        question_prompt + HEADER,
        [{"role": "user", "content": question_prompt + HEADER}],
    ]
    completions = [
        "    a = 3\n    return a + 4\n",  # the rest of the body
        program("return 8"),  # a whole program: used as is
        [{"role": "assistant", "content": "    return 7\n"}],
    ]
    rewards = AnswerReward(cot="python")(prompts, completions, answer=["7", "7", "7"])
    assert rewards == [1.0, 0.1, 1.0]
    assert program_calls == [[HEADER + completions[0], completions[1], HEADER + "    return 7\n"]]
    # the row's completion_prefix, when the dataset has that column, is the header (as in evaluation)
    rewards = AnswerReward(cot="python")(["no header"], ["    return 7\n"], answer=["7"], completion_prefix=[HEADER])
    assert rewards == [1.0] and program_calls[-1] == [HEADER + "    return 7\n"]
    last_header = 'def solution():\n    """old"""\nx\n' + HEADER
    assert program_text("    return 1\n", prompt=last_header) == HEADER + "    return 1\n"
    assert program_text("    return 1\n", prompt="no header") == "    return 1\n"
    assert program_text("    return 1\n", prefix=HEADER, prompt="ignored") == HEADER + "    return 1\n"
    assert program_text(program("return 1"), prefix=HEADER) == program("return 1")  # a whole program stays whole


def test_grade_rows_is_the_one_grading_of_dataset_rows_for_the_reward_and_evaluation(program_calls):
    """AnswerReward (rows made of TRL's columns) and evaluation (the dataset's rows) grade with one function."""
    import reft_trl.evaluation
    from reft_trl.rewards import grade_rows, score_rows

    assert reft_trl.evaluation.grade_rows is grade_rows and reft_trl.evaluation.score_rows is score_rows
    question_prompt = "Question:\nWhat is 3 + 4?\nAnswer reasoning:\n"
    rows = [
        {"prompt": question_prompt + HEADER, "answer": "7", "cot": "python", "completion_prefix": HEADER},
        {"prompt": question_prompt + HEADER, "answer": "7", "cot": "python"},  # no prefix: the prompt's header
        {
            "prompt": [{"role": "user", "content": question_prompt}],
            "answer": "7",
            "cot": "python",
            "completion_prefix": "",
        },
        {"prompt": question_prompt, "answer": "c", "answer_format": "multiple_choice", "cot": None},  # default cot
    ]
    completions = [
        "    return 7\n",
        "    return 8\n",
        [{"role": "assistant", "content": program("return 7")}],
        "Therefore, the answer is: (C)",
    ]
    outcomes = grade_rows(rows, completions)
    assert [o.reward for o in outcomes] == [1.0, 0.1, 1.0, 1.0]
    assert program_calls[-1] == [HEADER + "    return 7\n", HEADER + "    return 8\n", program("return 7")]
    columns = {k: [r.get(k) for r in rows] for k in ("answer", "answer_format", "cot", "completion_prefix")}
    reward = AnswerReward()
    assert reward([r["prompt"] for r in rows], completions, **columns) == score_rows(rows, completions)
    assert reward.last_outcomes == outcomes
    with pytest.raises(ValueError, match="2 completions for 1 rows"):
        grade_rows(rows[:1], completions[:2])


def test_answer_reward_logs_metrics_and_extra_columns():
    metrics: dict[str, float] = {}
    extra: dict[str, list] = {}
    reward = AnswerReward(metric_prefix="gsm8k/")
    completions = [nl("7.001"), nl("8"), "??", nl("7")]
    rewards = reward(
        ["p"] * 4,
        completions,
        answer=["7"] * 4,
        log_metric=metrics.__setitem__,
        log_extra=extra.__setitem__,
        trainer_state=None,
        completion_ids=[[1]] * 4,
    )
    assert rewards == [1.0, 0.1, 0.0, 1.0]
    assert metrics == {"gsm8k/accuracy": 0.5, "gsm8k/unparsable": 0.25}
    assert extra == {
        "answer_reward/answer": ["7.001", "8.0", None, "7.0"],
        "answer_reward/status": ["correct", "wrong", "unparsable", "correct"],
    }


def test_answer_reward_accuracy_counts_tolerance_matches():
    metrics: dict[str, float] = {}
    AnswerReward(partial_reward=1.0)(
        ["p"] * 2, [nl("7.004"), nl("9")], answer=["7", "7"], log_metric=metrics.__setitem__
    )
    assert metrics == {"accuracy": 0.5, "unparsable": 0.0}  # a wrong answer with reward 1.0 is not "accurate"


def test_answer_reward_pickles():
    reward = pickle.loads(pickle.dumps(AnswerReward("multiple_choice", partial_reward=0.0, name="mcq")))
    assert reward.__name__ == "mcq"
    assert reward(["p", "p"], [nl("c"), nl("d")], answer=["c", "c"]) == [1.0, 0.0]


# ------------------------------------------------------------------------------------------ in TRL trainers


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from reft_trl.models.tiny import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = char_tokenizer()
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("trainer_name", ["GRPO", "RLOO"])
def test_one_step_in_trl_trainer(trainer_name, tiny_model_path, tmp_path, registry, program_calls):
    """AnswerReward works unchanged as ``reward_funcs`` in GRPOTrainer and RLOOTrainer, reading the dataset columns."""
    import trl
    from datasets import Dataset

    from reft_trl.models.tiny import char_tokenizer

    register_answer_format(AnswerFormat(name="always_x", extract=_always_x))
    question = "Question:\nWhat is 3 + 4?\nAnswer reasoning:\n"
    dataset = Dataset.from_dict(
        {
            "prompt": ["Question:\nSay x.\nAnswer reasoning:\n", question + HEADER],
            "answer": ["x", "7"],
            "answer_format": ["always_x", "numeric"],  # row 0 always correct, row 1 a random program: unparsable
            "cot": ["nl", "python"],
        }
    )
    seen: list[dict] = []

    class Recorder(AnswerReward):
        def __call__(self, prompts, completions, **kwargs):
            seen.append(kwargs)
            return super().__call__(prompts, completions, **kwargs)

    reward = Recorder()
    config_cls, trainer_cls = getattr(trl, f"{trainer_name}Config"), getattr(trl, f"{trainer_name}Trainer")
    args = config_cls(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=16,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    trainer = trainer_cls(
        model=str(tiny_model_path),
        reward_funcs=[reward],
        args=args,
        train_dataset=dataset,
        processing_class=char_tokenizer(),
    )
    trainer.train()

    assert len(seen) == 1
    rows = sorted(zip(seen[0]["answer"], seen[0]["answer_format"], seen[0]["cot"]))
    assert rows == [("7", "numeric", "python")] * 2 + [("x", "always_x", "nl")] * 2
    assert callable(seen[0]["log_metric"])
    assert [p[: len(HEADER)] for p in program_calls[0]] == [HEADER, HEADER]  # rebuilt from the prompt's header
    statuses = sorted(o.status for o in reward.last_outcomes)
    assert statuses == ["correct", "correct", "unparsable", "unparsable"]
    logs = trainer.state.log_history[0]
    assert logs["rewards/answer_reward/mean"] == pytest.approx(0.5)
    assert logs["accuracy"] == pytest.approx(0.5)
    assert logs["unparsable"] == pytest.approx(0.5)
