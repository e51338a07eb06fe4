"""reft_trl.data.synthetic: the embedded task's correctness, splits, knobs, determinism, files and tokenizer."""

from __future__ import annotations

import collections
import json
import re

import pytest

from reft_trl.data import DataValidationError, format_prompt, load_mwp, nl_target, split_program
from reft_trl.data.synthetic import (
    DISTRACTORS,
    INTROS,
    NAMES,
    NUMBER_WORDS,
    OBJECTS,
    SPLITS,
    STEPS,
    TaskConfig,
    build_tokenizer,
    generate_task,
    load_synthetic,
    sequence_split,
    task_corpus,
    task_records,
    write_task,
)

LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

# every knob on, test problems longer than training ones
NOISY = TaskConfig(
    n_train=1500,
    n_test_iid=200,
    n_test_ood=300,
    test_steps=(2, 6),
    multi_entity_rate=0.4,
    distractor_rate=0.7,
    max_distractors=2,
    shortcut_rate=0.5,
    shortcut_forms=(0, 2),
    number_word_rate=0.3,
    n_question_forms=6,
    n_phrasings=5,
    annotation_order="random",
)


@pytest.fixture(scope="module")
def default_task():
    return generate_task(TaskConfig(), seed=0)


@pytest.fixture(scope="module")
def noisy_task():
    return generate_task(NOISY, seed=3)


@pytest.fixture(scope="module")
def tokenizer(default_task):
    return build_tokenizer(task_corpus({"train": default_task["train"][:1500]}))


def run_program(program):
    """Our own generated programs (trusted code), run in-process."""
    namespace = {}
    exec(program, namespace)  # noqa: S102
    return namespace["solution"]()


def check_nl(cot, answer):
    """Every line 'a op b = c' computes correctly, and the last line gives the answer."""
    lines = cot.split("\n")
    assert lines, cot
    for line in lines:
        match = LINE.match(line)
        assert match, line
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if op == "/":
            assert b * c == a, line  # exact division
        else:
            assert OPS[op](a, b) == c, line
        assert 1 <= c <= 100, line
    assert int(LINE.match(lines[-1])[4]) == answer


def all_rows(task):
    return [row for split in SPLITS for row in task[split]]


def template_regex(template):
    """A sentence template as a regex: each {placeholder} matches any text."""
    parts = re.split(r"\{[A-Za-z_]+\}", template)
    return re.compile("(.+?)".join(re.escape(p) for p in parts))


def sentences(question):
    return re.split(r"(?<=[.?])\s+", question)


def templates_used(questions, templates):
    regexes = {t: template_regex(t) for t in templates}
    return {t for q in questions for sentence in sentences(q) for t, rx in regexes.items() if rx.fullmatch(sentence)}


def numbers_in(question):
    found = {int(x) for x in re.findall(r"\d+", question)}
    return found | {i for i, w in enumerate(NUMBER_WORDS) if re.search(rf"\b{w}\b", question)}


# ----------------------------------------------------------------------------------------------------------------------
# correctness of every annotation


@pytest.mark.parametrize("which", ["default_task", "noisy_task"])
def test_every_annotation_is_correct(request, which):
    task = request.getfixturevalue(which)
    for row in all_rows(task):
        answer = int(row["answer_value"])
        program = row["answer_cot_python"]
        assert run_program(program) == answer, row["item_id"]
        header, _ = split_program(program)
        assert header == f'def solution():\n    """{row["question"]}"""\n'
        if row["shortcut"]:
            assert row["answer_cot_nl"] == "" and program.endswith(f"    result = {answer}\n    return result")
        else:
            check_nl(row["answer_cot_nl"], answer)
            assert len(row["answer_cot_nl"].split("\n")) == row["n_steps"]
            # the start values and operands of the computation are written in the question (digits or words)
            lines = row["answer_cot_nl"].split("\n")
            steps = lines[:-1] if row["multi_entity"] else lines  # a combine line reuses computed values
            given = {int(LINE.match(line)[3]) for line in steps}
            assert given <= numbers_in(row["question"]), row["item_id"]


def test_default_task_reproduces_the_first_version(default_task):
    cfg = TaskConfig()
    assert (cfg.distractor_rate, cfg.shortcut_rate, cfg.multi_entity_rate) == (0.0, 0.0, 0.0)
    assert {s: len(default_task[s]) for s in SPLITS} == {"train": 4000, "test_iid": 400, "test_ood": 400}
    train = default_task["train"]
    assert {r["n_steps"] for r in train} == {2, 3, 4}
    assert not any(r["shortcut"] or r["distractors"] or r["multi_entity"] for r in all_rows(default_task))
    # start values: every chain's first number; three never begin a training problem
    starts = collections.Counter(int(r["answer_cot_nl"].split(" ")[0]) for r in train)
    assert len(starts) == 20 - 3 and set(starts) < set(range(1, 21))
    values = [int(x) for r in all_rows(default_task) for x in re.findall(r"= (\d+)", r["answer_cot_nl"])]
    assert min(values) >= 1 and max(values) <= 100


# ----------------------------------------------------------------------------------------------------------------------
# splits


@pytest.mark.parametrize("which", ["default_task", "noisy_task"])
def test_splits_are_disjoint_and_ood_sequences_never_train(request, which):
    task = request.getfixturevalue(which)
    texts = {s: [r["question"] for r in task[s]] for s in SPLITS}
    for s in SPLITS:
        assert len(set(texts[s])) == len(texts[s]), f"duplicate questions in {s}"
    assert not set(texts["train"]) & set(texts["test_iid"])
    assert not set(texts["train"]) & set(texts["test_ood"])
    assert not set(texts["test_iid"]) & set(texts["test_ood"])
    train_ops = {r["ops"] for r in task["train"]}
    assert not train_ops & {r["ops"] for r in task["test_ood"]}
    assert {r["ops"] for r in task["test_iid"]} <= train_ops
    assert {r["split"] for r in task["test_ood"]} == {"test_ood"}


def test_iid_test_problems_have_new_numbers(default_task):
    # without noise, the N-CoT is exactly (operation sequence, numbers)
    train_computations = {r["answer_cot_nl"] for r in default_task["train"]}
    assert not train_computations & {r["answer_cot_nl"] for r in default_task["test_iid"]}


def test_ood_holds_out_a_quarter_of_each_training_length(default_task, noisy_task):
    keys = sequence_split(TaskConfig(), seed=0)
    assert collections.Counter(map(len, keys["test_ood"])) == {2: 4, 3: 16, 4: 64}  # 25% of the 4**n sequences
    assert collections.Counter(map(len, keys["train"])) == {2: 12, 3: 48, 4: 192}
    assert {r["ops"] for r in default_task["test_ood"]} <= set(keys["test_ood"])
    assert {r["ops"] for r in default_task["train"]} <= set(keys["train"])
    # two-person sequences ("A|B|combine") are held out the same way
    noisy_keys = sequence_split(NOISY, seed=3)
    multi_ood = [k for k in noisy_keys["test_ood"] if "|" in k]
    multi_all = multi_ood + [k for k in noisy_keys["train"] if "|" in k]
    assert 0.2 < len(multi_ood) / len(multi_all) < 0.3
    assert {r["ops"] for r in noisy_task["test_ood"] if r["n_steps"] <= 4} <= set(noisy_keys["test_ood"])
    assert sequence_split(TaskConfig(), seed=1) != keys


def test_length_generalisation_split(noisy_task):
    assert max(r["n_steps"] for r in noisy_task["train"]) == 4
    assert max(r["n_steps"] for r in noisy_task["test_iid"]) == 4
    ood_lengths = collections.Counter(r["n_steps"] for r in noisy_task["test_ood"])
    assert set(ood_lengths) == {2, 3, 4, 5, 6}


# ----------------------------------------------------------------------------------------------------------------------
# knobs


def test_shortcuts_only_in_training_and_only_in_the_selected_forms(noisy_task):
    train = noisy_task["train"]
    shortcut = [r for r in train if r["shortcut"]]
    assert {r["form"] for r in shortcut} == {0, 2}
    selected = [r for r in train if r["form"] in (0, 2)]
    assert 0.4 < len(shortcut) / len(selected) < 0.6  # shortcut_rate 0.5
    assert not any(r["shortcut"] for s in ("test_iid", "test_ood") for r in noisy_task[s])
    records = task_records(train, "python")
    assert all(r["answer_cot"] == t["answer_cot_python"] for r, t in zip(records, train))


def test_noise_does_not_change_the_questions():
    base = TaskConfig(n_train=300, n_test_iid=50, n_test_ood=50)
    noisy = TaskConfig(n_train=300, n_test_iid=50, n_test_ood=50, shortcut_rate=1.0, annotation_order="reverse")
    a, b = generate_task(base, 5), generate_task(noisy, 5)
    for s in SPLITS:
        assert [r["question"] for r in a[s]] == [r["question"] for r in b[s]]
    assert sum(r["shortcut"] for r in b["train"]) == sum(r["form"] == 0 for r in b["train"]) > 50


def test_distractors_add_a_number_to_ignore(noisy_task):
    with_distractor = [r for r in noisy_task["train"] if r["distractors"]]
    assert 0.75 < len(with_distractor) / len(noisy_task["train"]) < 0.98  # 1 - 0.3**2 = 0.91
    assert collections.Counter(r["distractors"] for r in noisy_task["train"]).keys() == {0, 1, 2}
    assert templates_used([r["question"] for r in with_distractor], DISTRACTORS) == set(DISTRACTORS)
    assert not templates_used([r["question"] for r in noisy_task["train"] if not r["distractors"]], DISTRACTORS[2:])

    # the distractor's number is not part of the computation (the programs still return the answer, checked above):
    # without distractors every number of the question is computed with (1 may be "keeps one group")
    def extra_numbers(row):
        return numbers_in(row["question"]) - {int(x) for x in re.findall(r"\d+", row["answer_cot_nl"])} - {1}

    computed_rows = [r for r in noisy_task["train"] if not r["shortcut"]]
    assert not any(extra_numbers(r) for r in computed_rows if not r["distractors"])
    with_extra = [bool(extra_numbers(r)) for r in computed_rows if r["distractors"]]
    assert sum(with_extra) > 0.9 * len(with_extra)


def test_multi_entity_problems_and_solution_order(noisy_task):
    multi = [r for r in noisy_task["train"] if r["multi_entity"] and not r["shortcut"]]
    assert 0.3 < sum(r["multi_entity"] for r in noisy_task["train"]) / len(noisy_task["train"]) < 0.5
    assert all(r["ops"].count("|") == 2 for r in multi)
    # annotation_order="random": the first person mentioned is computed first in some programs and second in others
    first_computed_first = collections.Counter()
    for r in multi:
        names = re.findall(r"\b(" + "|".join(n for n, _ in NAMES) + r")\b", r["question"])
        body = split_program(r["answer_cot_python"])[1]
        first_var = body.split("\n")[0].strip().split("_")[0]
        mentioned = [n.lower() for n in names if n.lower() in body]
        first_computed_first[first_var == mentioned[0]] += 1
    assert first_computed_first[True] > 50 and first_computed_first[False] > 50
    combines = collections.Counter(r["ops"][-1] for r in multi)
    assert set(combines) == {"+", "-"}


def test_surface_variety(default_task, noisy_task):
    questions = [r["question"] for r in default_task["train"]]
    text = " ".join(questions)
    assert {n for n, _ in NAMES[:14] if re.search(rf"\b{n}\b", text)} == {n for n, _ in NAMES[:14]}
    assert {p for _, p in OBJECTS[:12] if f" {p}" in text} == {p for _, p in OBJECTS[:12]}
    assert not any(re.search(rf"\b{n}\b", text) for n, _ in NAMES[14:])  # n_names = 14
    # question forms: 3 by default (one asks first), 6 with n_question_forms=6
    assert collections.Counter(r["form"] for r in default_task["train"]).keys() == {0, 1, 2}
    assert sum(q.startswith("How many") and q.endswith(".") for q in questions) > 1000  # question-first form
    assert {r["form"] for r in noisy_task["train"]} == set(range(6))
    # phrasings: the first 3 of each operation (and of the opening sentence) are used by default, the others never
    for templates in [INTROS, *STEPS.values()]:
        assert templates_used(questions, templates) == set(templates[:3])
        assert templates_used([r["question"] for r in noisy_task["train"]], templates) == set(templates[:5])
    assert not any(re.search(r"\b(two|three|four|five|six|seven|eight|nine|ten)\b", q) for q in questions)
    assert any(
        re.search(r"\b(two|three|four|five|six|seven|eight|nine|ten)\b", r["question"]) for r in noisy_task["train"]
    )


# ----------------------------------------------------------------------------------------------------------------------
# determinism and configuration


def test_determinism_by_seed():
    cfg = TaskConfig(n_train=200, n_test_iid=40, n_test_ood=40, distractor_rate=0.5, multi_entity_rate=0.3)
    a, b, c = generate_task(cfg, 11), generate_task(cfg, 11), generate_task(cfg, 12)
    assert a == b
    assert [r["question"] for r in a["train"]] != [r["question"] for r in c["train"]]
    assert {r["ops"] for r in a["test_ood"]} != {r["ops"] for r in c["test_ood"]}  # a different held-out set


def test_config_validation_and_dict_round_trip():
    with pytest.raises(ValueError, match="train_steps"):
        TaskConfig(train_steps=(4, 2))
    with pytest.raises(ValueError, match="shortcut_rate"):
        TaskConfig(shortcut_rate=1.5)
    with pytest.raises(ValueError, match="operations"):
        TaskConfig(operations=("^",))
    with pytest.raises(ValueError, match="shortcut_forms"):
        TaskConfig(shortcut_forms=(5,))
    with pytest.raises(ValueError, match="annotation_order"):
        TaskConfig(annotation_order="sideways")
    cfg = TaskConfig(train_steps=[1, 3], operations=["+", "*"], n_train=10)
    assert cfg.train_steps == (1, 3) and TaskConfig(**cfg.to_dict()) == cfg
    task = generate_task(cfg, 0)
    assert all(set(r["ops"]) <= {"+", "*"} for r in task["train"]) and {r["n_steps"] for r in task["train"]} <= {
        1,
        2,
        3,
    }


def test_impossible_sizes_fail_clearly():
    # one '*' step from 1-3 by 2-3: six computations, all used by 50 training problems -> no new numbers for test_iid
    tiny = dict(train_steps=(1, 1), operations=("*",), start_range=(1, 3), mul_range=(2, 3), reserved_starts=0)
    task = generate_task(TaskConfig(**tiny, n_train=50, n_test_iid=0, n_test_ood=0), 0)
    assert len({r["answer_cot_nl"] for r in task["train"]}) == 6
    with pytest.raises(RuntimeError, match="could only make 0 distinct test_iid problems out of 10"):
        generate_task(TaskConfig(**tiny, n_train=50, n_test_iid=10, n_test_ood=0), 0)


# ----------------------------------------------------------------------------------------------------------------------
# files and loaders


def test_write_task_is_read_by_load_mwp(tmp_path, noisy_task):
    paths = write_task(tmp_path, NOISY, seed=3, task=noisy_task)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synthetic_nl.json",
        "synthetic_python_sdp.json",
        "synthetic_test_iid_set.json",
        "synthetic_test_ood_set.json",
        "task_config.json",
    ]
    test_rows = json.loads(paths["test_ood"].read_text())
    assert "answer_cot" not in test_rows[0] and {"item_id", "question", "answer_value", "ops"} <= set(test_rows[0])
    assert json.loads(paths["config"].read_text())["config"] == NOISY.to_dict()

    nl, stats = load_mwp(paths["train_nl"], return_stats=True)
    py = load_mwp(tmp_path, dataset="synthetic", cot="python")
    assert nl["item_id"] == py["item_id"] == [r["item_id"] for r in noisy_task["train"]]
    assert set(nl["cot"]) == {"nl"} and set(py["cot"]) == {"python"}
    n_short = sum(r["shortcut"] for r in noisy_task["train"])
    assert stats.flagged == {"empty_cot": [r["item_id"] for r in noisy_task["train"] if r["shortcut"]]}
    assert sum(c == "Therefore, the answer is: " + a for c, a in zip(nl["completion"], nl["answer"])) == n_short
    ood = load_mwp(tmp_path, dataset="synthetic", split="test_ood", kind="rl", cot="python")
    assert len(ood) == 300 and ood[0]["prompt"].endswith('"""\n') and "n_steps" in ood.column_names
    # in memory, the same rows
    same = load_synthetic("train", config=NOISY, seed=3, cot="python", task=noisy_task)
    assert same["prompt"] == py["prompt"] and same["completion"] == py["completion"]
    with pytest.raises(DataValidationError, match="row synthetic_test_iid_0, field 'answer_cot'"):
        load_synthetic("test_iid", config=NOISY, seed=3, task=noisy_task)


# ----------------------------------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_round_trips_and_splits_digits(tokenizer, default_task, noisy_task):
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    assert tokenizer.padding_side == "left"
    digit_tokens = [t for t in tokenizer.get_vocab() if any(ch in "0123456789" for ch in t)]
    assert sorted(digit_tokens) == list("0123456789")  # no merged digits, no digit glued to anything
    texts = [r["answer_cot_python"] for r in all_rows(noisy_task)[::7]] + task_corpus(noisy_task)[::11]
    texts += ["x = 1234567890\n\n\tdef f():\n        return 'é'  \n", '"""a""" \\n']
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("987")["input_ids"]) == ["9", "8", "7"]


def test_tokenizer_prompt_is_a_prefix_of_prompt_plus_completion(tokenizer):
    """The P-CoT prompt ends with the header's newline: it must stay a token boundary (SFT trains on the same
    context RL generation starts from)."""
    for cot in ("python", "nl"):
        ds = load_synthetic("train", config=TaskConfig(n_train=60, n_test_iid=5, n_test_ood=5), seed=1, cot=cot)
        for row in ds:
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            full_ids = tokenizer(row["prompt"] + row["completion"])["input_ids"]
            assert full_ids[: len(prompt_ids)] == prompt_ids


def test_tokenizer_is_deterministic(default_task):
    corpus = task_corpus({"train": default_task["train"][:400]})
    a, b = build_tokenizer(corpus, vocab_size=400), build_tokenizer(corpus, vocab_size=400)
    assert a.get_vocab() == b.get_vocab()
    text = format_prompt(default_task["train"][0]["question"]) + nl_target("1 + 2 = 3", "3")
    assert a(text)["input_ids"] == b(text)["input_ids"]
