"""The tool demo's parts (`make demo-tools`): the compact python-tool chat template of the demo's BPE tokenizer, the
tool-calling SFT rows, greedy multi-turn evaluation with the tool, the configs and the Makefile target. Fast: the
demo itself is not run here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from trl import ModelConfig, TrlParser
from trl.chat_template_utils import (
    is_chat_template_prefix_preserving,
    is_chat_template_stop_token_trained,
    parse_response,
    supports_tool_calling,
)

from reft_trl.data import TaskConfig, build_tokenizer, generate_task, task_corpus
from reft_trl.data.args import DataArguments
from reft_trl.evaluation import answer_accuracy
from reft_trl.evaluation.tool_generation import generate_with_tools, tool_suffix_ids
from reft_trl.models.tiny import add_compact_tool_template
from reft_trl.sandbox import SandboxPool, python_tool
from reft_trl.trainers import ReFTConfig, WarmupSFTConfig

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "recipes" / "configs" / "demo_tools"
TASK = {"n_train": 60, "n_test_iid": 8, "n_test_ood": 8, "shortcut_rate": 0.8, "shortcut_forms": [0]}


@pytest.fixture(scope="module")
def task():
    return generate_task(TaskConfig(**TASK), 0)


@pytest.fixture(scope="module")
def tokenizer(task):
    return add_compact_tool_template(build_tokenizer(task_corpus(task)))


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(num_workers=1, timeout=2.0) as p:
        yield p


@pytest.fixture(scope="module")
def sft_rows(task):
    return DataArguments(dataset="synthetic", cot="nl", tools="python", task_config=TASK).train_dataset("sft", task)


def test_compact_template_is_one_trl_can_train_multi_turn_rollouts_with(tokenizer):
    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)
    assert is_chat_template_stop_token_trained(tokenizer)
    reply = [{"role": "tool", "name": "python", "content": "26"}]
    assert tokenizer.decode(tool_suffix_ids(tokenizer, reply)) == "<out>26</out><a>"
    with pytest.raises(ValueError, match="ends turns with '</s>'"):
        tokenizer_with_other_eos = build_tokenizer(["a b"], vocab_size=300)
        tokenizer_with_other_eos.eos_token = "<pad>"
        add_compact_tool_template(tokenizer_with_other_eos)


def test_tool_sft_rows_round_trip_through_trls_parser_and_the_sandbox(sft_rows, tokenizer, pool, task):
    """Every assistant turn of the SFT traces, as the tokens the model learns to generate after its context, parses
    back (TRL's parse_response with the tokenizer's response_template) to the message it was rendered from; running
    its calls with the python tool gives the tool messages of the trace; shortcut annotations call no tool."""
    tool = python_tool(pool=pool)
    calls = 0
    for row, source in zip(sft_rows, task["train"]):
        messages = [*row["prompt"], *row["completion"]]
        assert messages[-1]["content"].endswith(f"Therefore, the answer is: {source['answer_value']}")
        assert any(m["role"] == "tool" for m in messages) == (not source["shortcut"])
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True, return_dict=False)
            through = tokenizer.apply_chat_template(messages[: k + 1], return_dict=False)
            assert through[: len(before)] == before
            parsed = parse_response(tokenizer, through[len(before) :], prefix=before, tools=[tool])
            if message.get("tool_calls"):
                codes = [c["function"]["arguments"]["code"] for c in message["tool_calls"]]
                assert [c["function"]["arguments"]["code"] for c in parsed["tool_calls"]] == codes
                assert [tool(code=c) for c in codes] == [messages[k + 1]["content"]]
                calls += 1
            else:
                assert parsed == {"role": "assistant", "content": message["content"]}
    assert calls > 50


class ScriptedModel(torch.nn.Module):
    """``generate`` replays a script of turns (by the number of tool replies in the context): a stand-in policy."""

    def __init__(self, tokenizer, turns):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.turns = tokenizer, turns

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids in input_ids.tolist():
            text = self.tok.decode(ids)
            turn = self.turns(text.split("Question:\n")[1], text.count("<out>"))
            rows.append(self.tok(turn, add_special_tokens=False)["input_ids"][:max_new_tokens])
        width = max(len(r) for r in rows)
        new = [r + [self.tok.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(new, dtype=input_ids.dtype)], dim=1)


def test_greedy_evaluation_runs_the_tool_and_grades_the_last_turn(tokenizer, pool, task):
    """A policy that asks the tool for 40 + 2 and answers with the tool's reply: its conversations hold the sandbox's
    output; graded against gold 42 it is right exactly when it answered what the tool said."""
    rows = DataArguments(dataset="synthetic", cot="nl", tools="python", task_config=TASK).load(
        "test_iid", "rl", task=task
    )
    rows = [{**row, "answer": "42"} for row in rows]

    def turns(question, replies):
        if replies == 0:
            return "<call>40 + 2</call></s>"
        return "Therefore, the answer is: 42</s>" if "Mia" not in question else "Therefore, the answer is: 7</s>"

    model = ScriptedModel(tokenizer, turns)
    tools = [python_tool(pool=pool)]
    conversations = generate_with_tools(model, tokenizer, [r["prompt"] for r in rows], tools, progress=False)
    assert all([m["role"] for m in c] == ["assistant", "tool", "assistant"] for c in conversations)
    assert all(c[1]["content"] == "42" for c in conversations)
    result = answer_accuracy(model, tokenizer, rows, tools=tools, progress=False)
    expected = sum("Mia" not in r["question"] for r in rows) / len(rows)
    assert result["accuracy"] == pytest.approx(expected) and result["n"] == len(rows)
    # the whole completion budget counts the tool's tokens: 8 tokens leave no room for the reply and the answer
    cut = generate_with_tools(model, tokenizer, [rows[0]["prompt"]], tools, max_new_tokens=8, progress=False)
    assert [m["role"] for m in cut[0]] == ["assistant"]


def test_tools_need_n_cot_and_name_the_python_tool():
    with pytest.raises(ValueError, match="use cot='nl'"):
        DataArguments(dataset="synthetic", cot="python", tools="python")
    with pytest.raises(ValueError, match="the one tool provided is 'python'"):
        DataArguments(dataset="synthetic", tools="bash")
    assert DataArguments(dataset="synthetic").tool_functions() == []


def test_demo_tools_configs_match_the_p_cot_demo_but_for_the_tool(tmp_path):
    def parse(path, config_class):
        argv = ["--config", str(path), "--model_name_or_path", "m", "--output_dir", str(tmp_path)]
        return TrlParser((DataArguments, config_class, ModelConfig)).parse_args_and_config(args=argv)

    demo = ROOT / "recipes" / "configs" / "demo"
    for name, config_class in (("sft.yaml", WarmupSFTConfig), ("reft.yaml", ReFTConfig)):
        data, tools_config, _ = parse(CONFIGS / name, config_class)
        _, p_cot_config, _ = parse(demo / name, config_class)
        assert (data.cot, data.tools) == ("nl", "python")
        for key in ("learning_rate", "per_device_train_batch_size", "seed", "num_train_epochs", "max_steps"):
            assert getattr(tools_config, key) == getattr(p_cot_config, key), key
    assert parse(CONFIGS / "sft.yaml", WarmupSFTConfig)[1].assistant_only_loss
    task_tools, task_p_cot = (yaml.safe_load((d / "task.yaml").read_text()) for d in (CONFIGS, demo))
    assert task_tools == {**task_p_cot, "cot": "nl", "tools": "python", "tool_template": True}


def test_make_demo_tools_trains_and_reports_beside_the_p_cot_demo(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    argv = ["make", "-n", "demo-tools", f"DEMO_TOOLS={tmp_path}/t", f"DEMO={tmp_path}/d"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = " ".join(out.replace("\\\n", " ").split())  # continuation lines joined
    assert f"--config recipes/configs/demo_tools/sft.yaml --dataset synthetic --data_path {tmp_path}/t/task" in lines
    assert "--cot nl --tools python" in lines and f'--compare "P-CoT: ={tmp_path}/d/report.json"' in lines
