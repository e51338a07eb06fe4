"""Multi-turn tool-calling rollouts in ReFTTrainer (TRL's ``tools=``, ``environment_factory=``, ``rollout_func=``) and
the sandbox as the ``python`` tool. Generation is faked as in TRL's own tool tests (``model.generate`` patched with
scripted token ids) on a tiny in-process model whose tokenizer has a tool-calling chat template."""

from __future__ import annotations

import os
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from conftest import cpu_trainer_settings
from datasets import Dataset

from reft_trl.models.tiny import tiny_llama, tool_chat_tokenizer
from reft_trl.sandbox import SandboxPool, python_tool, run_tool_code
from reft_trl.trainers import OnlineSTConfig, OnlineSTTrainer, ReFTConfig, ReFTTrainer
from reft_trl.trainers.rollout import action_mask

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

TOOL_CALL = '<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call><|im_end|>'


def tool_call(name: str, **arguments) -> str:
    import json

    return TOOL_CALL.format(name=name, arguments=json.dumps(arguments))


@pytest.fixture(scope="module")
def tool_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-tools")
    tok = tool_chat_tokenizer()
    tiny_llama(tok, seed=0, max_position_embeddings=2048).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(num_workers=1, timeout=2.0) as p:
        yield p


def questions(n=4):
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"What is {i + 2} * 7?"}] for i in range(n)],
            "answer": [str((i + 2) * 7) for i in range(n)],
        }
    )


class LastTurnReward:
    """1 if the gold answer is in the last assistant message; remembers every completion (messages) it scored."""

    __name__ = "last_turn_reward"

    def __init__(self):
        self.completions = []

    def __call__(self, prompts, completions, answer, **kwargs):
        self.completions += completions
        return [1.0 if a in c[-1].get("content", "") else 0.0 for c, a in zip(completions, answer)]


class ScriptedGeneration:
    """``model.generate`` replaced by a script: ``first(i, prompt_text)`` is row i's first turn, ``after_tool(text)``
    a turn after a tool response (``text``: the whole context so far). Records every context it was given."""

    def __init__(self, tokenizer, first, after_tool):
        self.tok, self.first, self.after_tool = tokenizer, first, after_tool
        self.contexts: list[str] = []
        self.calls = 0

    def __call__(self, input_ids, **kwargs):
        self.calls += 1
        texts = [self.tok.decode([t for t in row.tolist() if t != self.tok.pad_token_id]) for row in input_ids]
        self.contexts += texts
        turns = [self.after_tool(t) if "<tool_response>" in t else self.first(i, t) for i, t in enumerate(texts)]
        ids = [self.tok(turn, add_special_tokens=False)["input_ids"] for turn in turns]
        width = max(len(x) for x in ids)
        padded = [x + [self.tok.pad_token_id] * (width - len(x)) for x in ids]
        return torch.cat([input_ids, torch.tensor(padded, device=input_ids.device)], dim=-1)


def make_trainer(checkpoint, tmp_path, *, trainer_cls=ReFTTrainer, config_cls=ReFTConfig, dataset=None, **kwargs):
    config = kwargs.pop("config", {})
    return trainer_cls(
        model=checkpoint,
        args=config_cls(**cpu_trainer_settings(tmp_path / "out", **{"max_completion_length": 160, **config})),
        train_dataset=dataset if dataset is not None else questions(),
        **kwargs,
    )


def record_rollouts(trainer):
    batches = []
    original = trainer._process_rollout

    def recording(batch, inputs, mode):
        out = original(batch, inputs, mode)
        batches.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()})
        return out

    trainer._process_rollout = recording
    return batches


# ------------------------------------------------------------------------------------------ the python tool
def test_python_tool_returns_what_the_code_printed_or_the_error(pool):
    replies = run_tool_code(
        [
            "12 * 7",
            "x = 3\nprint('x is', x)\nx * 2",
            "1 / 0",
            "import math\nmath.sqrt(16)",
            "y = 1",
            "import sys\nsys.exit(2)",
        ],
        pool=pool,
    )
    assert replies == ["84", "x is 3\n6", "ZeroDivisionError: division by zero", "4.0", "(no output)", "SystemExit: 2"]


def test_python_tool_reports_timeouts_crashes_and_caps_the_output(pool):
    replies = run_tool_code(
        ["while True:\n    pass", "import os\nos._exit(3)", "print('a' * 5000)"], pool=pool, timeout=1.0
    )
    assert replies[0] == "Error: the code ran out of time (1 s) and was stopped."
    assert replies[1].startswith("Error: the code's process died")
    assert replies[2] == "a" * pool.max_output_chars


def test_python_tool_has_no_state_across_calls(pool):
    tool = python_tool(pool=pool)
    assert tool("x = 41") == "(no output)"
    assert tool("x + 1") == "NameError: name 'x' is not defined"


def test_python_tool_is_a_tool_trl_can_describe(pool):
    from transformers.utils import get_json_schema

    schema = get_json_schema(python_tool(pool=pool))
    assert schema["function"]["name"] == "python"
    assert schema["function"]["parameters"]["required"] == ["code"]
    with pytest.raises(ValueError, match="positive number of seconds"):
        python_tool(timeout=0)
    with pytest.raises(TypeError, match="code must be a string"):
        python_tool(pool=pool)(code=3)


def test_hostile_tool_calls_are_contained(pool, tmp_path):
    """A fork bomb, a file write outside the sandbox and a network connection, as tool calls: each fails inside the
    sandbox (as in tests/test_sandbox.py), the reply says so, and nothing happened outside."""
    isolation = pool.isolation
    if not (isolation.get("seccomp") and isolation.get("landlock")):
        pytest.skip(f"seccomp and Landlock needed: {isolation}")
    canary = tmp_path / "canary.txt"
    fork_bomb = "import os\nwhile True:\n    os.fork()"
    write = f"open({str(canary)!r}, 'w').write('pwned')"
    network = "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)"
    replies = run_tool_code([fork_bomb, write, network], pool=pool)
    assert replies[0] == "PermissionError: [Errno 1] Operation not permitted"
    assert replies[1].startswith("PermissionError") or replies[1].startswith("FileNotFoundError")
    assert replies[2] == "PermissionError: [Errno 1] Operation not permitted"
    assert not canary.exists()


# ----------------------------------------------------------------------------------- a multi-turn PPO run
def test_multi_turn_run_calls_the_tool_feeds_its_output_back_and_updates_only_model_tokens(
    tool_checkpoint, tmp_path, pool
):
    """Rows 0-1 call the python tool, row 2 calls it with a wrong argument (a failed call), row 3 answers directly.
    The tool's output enters the context of the next turn; tool-result tokens get no advantage, no return, and no
    gradient through the policy, value and entropy terms; model tokens do. (TRL's test_train_with_tools on
    ReFTTrainer, with the sandbox as the tool.)"""
    tok = tool_chat_tokenizer()
    reward = LastTurnReward()

    def first(i, text):
        n = int(text.rsplit("What is ", 1)[1].split(" ")[0])
        if i in (0, 1):
            return tool_call("python", code=f"print({n} * 7)")
        if i == 2:
            return tool_call("python", source="1")
        return f"It is {n * 7}.<|im_end|>"

    def after_tool(text):
        result = text.rsplit("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0]
        return f"The answer is {result}.<|im_end|>"

    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=reward,
        tools=[python_tool(pool=pool)],
        config={
            "max_steps": 1,
            "num_iterations": 1,
            "entropy_coef": 0.1,
            "shuffle_dataset": False,
            "max_completion_length": 400,
        },
    )
    batches = record_rollouts(trainer)
    generate = ScriptedGeneration(tok, first, after_tool)
    grads = []
    original_forward = trainer._get_per_token_logps_and_entropies

    def forward_keeping_grads(model, *args, **kwargs):
        out = original_forward(model, *args, **kwargs)
        if torch.is_grad_enabled() and trainer._capture is not None and trainer._capture.values is not None:
            for tensor in (out[0], out[1], trainer._capture.values):
                tensor.retain_grad()
            grads.append((out[0], out[1], trainer._capture.values))
        return out

    trainer._get_per_token_logps_and_entropies = forward_keeping_grads
    loss_inputs = []
    original_loss = trainer._compute_loss

    def recording_loss(model, inputs):
        loss_inputs.append(inputs)
        return original_loss(model, inputs)

    trainer._compute_loss = recording_loss
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with patch.object(trainer.model, "generate", side_effect=generate):
        trainer.train()

    logs = trainer.state.log_history[0]
    assert logs["tools/call_frequency"] == pytest.approx(3 / 4)
    assert logs["tools/failure_frequency"] == pytest.approx(1 / 3)
    # the tool ran in the sandbox and its output is in the context of the next turn
    tool_contexts = [c for c in generate.contexts if "<tool_response>" in c]
    assert len(tool_contexts) == 3
    assert any("<tool_response>\n14\n</tool_response>" in c for c in tool_contexts)
    assert any("<tool_response>\n21\n</tool_response>" in c for c in tool_contexts)
    assert [c[-1]["content"] for c in reward.completions[:2]] == ["The answer is 14.", "The answer is 21."]

    (batch,) = batches
    tool_tokens = (batch["completion_mask"] * (1 - batch["tool_mask"])).bool()
    model_tokens = action_mask(batch).bool()
    assert tool_tokens[:3].sum(dim=1).gt(0).all() and not tool_tokens[3].any()
    decoded = [tok.decode(batch["completion_ids"][i][tool_tokens[i]]) for i in range(2)]
    assert "14" in decoded[0] and "21" in decoded[1] and all("<tool_response>" in d for d in decoded)
    assert torch.all(batch["advantages"][tool_tokens] == 0) and torch.all(batch["returns"][tool_tokens] == 0)
    assert torch.all(batch["advantages"][model_tokens] != 0)

    (logps, entropies, values) = grads[0]  # the loss's forward, over its (shuffled) micro-batch
    (inputs,) = loss_inputs
    tool_tokens = (inputs["completion_mask"] * (1 - inputs["tool_mask"])).bool()
    model_tokens = action_mask(inputs).bool()
    # a value gets a gradient where its return differs from it (not in the rows scored 0 with no KL: R = V = 0)
    learns_value = model_tokens & (inputs["returns"] != inputs["old_values"])
    for name, tensor, learns in (
        ("log-probs", logps, model_tokens),
        ("entropies", entropies, model_tokens),
        ("values", values, learns_value),
    ):
        assert tensor.grad is not None, name
        assert torch.all(tensor.grad[tool_tokens] == 0), name
        assert learns.sum() > 20 and torch.all(tensor.grad[learns] != 0), name
    after = dict(trainer.model.named_parameters())
    assert not torch.equal(before["v_head.weight"], after["v_head.weight"])
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_max_tool_calling_iterations_caps_the_tool_loop(tool_checkpoint, tmp_path, pool):
    """A model that calls the tool on every turn: with max_tool_calling_iterations=2, each rollout runs 2 tool calls
    and generates 3 turns (the first + one after each tool result; the last turn's call is not run), and trains."""
    tok = tool_chat_tokenizer()
    always = ScriptedGeneration(
        tok, lambda i, t: tool_call("python", code="1 + 1"), lambda t: tool_call("python", code="2")
    )
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=LastTurnReward(),
        tools=[python_tool(pool=pool)],
        config={"max_steps": 1, "num_iterations": 1, "max_tool_calling_iterations": 2, "max_completion_length": 400},
    )
    assert trainer.args.max_tool_calling_iterations == 2
    with patch.object(trainer.model, "generate", side_effect=always):
        trainer.train()
    assert always.calls == 3
    assert trainer.state.log_history[0]["tools/call_frequency"] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- environments
class CounterEnvironment:
    def reset(self, **kwargs):
        self._counter = 0

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self._counter += step
        return self._counter

    def get_reward(self) -> float:
        return float(self._counter)


def test_environment_owned_reward_scores_alone(tool_checkpoint, tmp_path):
    """TRL's test_train_with_environment_owned_reward on ReFTTrainer: no reward_funcs, no default answer reward
    beside the environment's (the rows have no answer column); counters 1, 0, 0, 0 -> rewards 1, 0, 0, 0."""
    tok = tool_chat_tokenizer()
    script = ScriptedGeneration(
        tok,
        lambda i, t: tool_call("increment", step=1) if i == 0 else "I won't.<|im_end|>",
        lambda t: "Done!<|im_end|>",
    )
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Count {i}"}] for i in range(4)]})
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        dataset=dataset,
        environment_factory=CounterEnvironment,
        config={"max_steps": 1, "num_iterations": 1, "shuffle_dataset": False},
    )
    assert trainer.reward_func_names == ["CounterEnvironment"]
    assert trainer.reward_weights.tolist() == [1.0]
    assert "increment" in [t.__name__ for t in trainer.tools] and "get_reward" not in [
        t.__name__ for t in trainer.tools
    ]
    batches = record_rollouts(trainer)
    with patch.object(trainer.model, "generate", side_effect=script):
        trainer.train()
    assert trainer.state.log_history[0]["rewards/CounterEnvironment/mean"] == pytest.approx(1 / 4)
    assert batches[0]["scores"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_environment_without_reward_and_no_reward_funcs_is_refused(tool_checkpoint, tmp_path):
    class NoReward:
        def reset(self, **kwargs):
            pass

        def ping(self) -> str:
            """
            Ping.

            Returns:
                pong
            """
            return "pong"

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]] * 4})
    with pytest.raises(ValueError, match="No reward source provided"):
        make_trainer(tool_checkpoint, tmp_path, dataset=dataset, environment_factory=NoReward)


def test_environment_reward_coexists_with_reward_funcs(tool_checkpoint, tmp_path):
    trainer = make_trainer(
        tool_checkpoint, tmp_path, reward_funcs=LastTurnReward(), environment_factory=CounterEnvironment
    )
    assert trainer.reward_func_names == ["last_turn_reward", "CounterEnvironment"]


# -------------------------------------------------------------------------------------------- rollout_func
def test_rollout_func_env_mask_is_context_not_actions(tool_checkpoint, tmp_path):
    """A custom rollout (rollout_func) that interleaves environment tokens (env_mask 0): ReFT computes the old
    log-probs and values with its own forward over the returned tokens, and GAE skips the environment's tokens."""
    tok = tool_chat_tokenizer()
    model_a, env, model_b = (tok(s, add_special_tokens=False)["input_ids"] for s in ("ab", "[env says 7]", "c7"))
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def rollout_func(prompts, trainer):
        texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        completion = model_a + env + model_b + [eos]
        mask = [1] * len(model_a) + [0] * len(env) + [1] * (len(model_b) + 1)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [list(completion) for _ in prompts],
            "logprobs": [[-1.0] * len(completion) for _ in prompts],
            "env_mask": [list(mask) for _ in prompts],
        }

    def by_row(completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=by_row,
        rollout_func=rollout_func,
        config={"max_steps": 1, "num_iterations": 1},
    )
    batches = record_rollouts(trainer)
    trainer.train()
    (batch,) = batches
    env_tokens = (batch["completion_mask"] * (1 - batch["tool_mask"])).bool()
    assert env_tokens.sum(dim=1).tolist() == [len(env)] * 4
    assert torch.all(batch["advantages"][env_tokens] == 0) and torch.all(batch["returns"][env_tokens] == 0)
    assert torch.all(batch["advantages"][action_mask(batch).bool()] != 0)


# --------------------------------------------------------------------------------------------------- Online-ST
def test_online_st_learns_only_the_model_tokens_of_a_multi_turn_sample(tool_checkpoint, tmp_path, pool):
    tok = tool_chat_tokenizer()
    script = ScriptedGeneration(
        tok, lambda i, t: tool_call("python", code="6 * 7"), lambda t: "The answer is 42.<|im_end|>"
    )
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "What is 6 * 7?"}]] * 4,
            "answer": ["42"] * 4,
            "completion": [[{"role": "assistant", "content": "The answer is 42."}]] * 4,
        }
    )
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        trainer_cls=OnlineSTTrainer,
        config_cls=OnlineSTConfig,
        dataset=dataset,
        reward_funcs=LastTurnReward(),
        tools=[python_tool(pool=pool)],
        config={"max_steps": 1},
    )
    masks = []
    original = trainer._nll

    def recording(model, prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask=None):
        masks.append((completion_mask.clone(), None if loss_mask is None else loss_mask.clone()))
        return original(model, prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask)

    trainer._nll = recording
    with patch.object(trainer.model, "generate", side_effect=script):
        trainer.train()
    sample_masks = [(c, m) for c, m in masks if m is not None]
    assert sample_masks, "no correct sample was learned"
    completion_mask, loss_mask = sample_masks[0]
    assert loss_mask.sum() < completion_mask.sum()  # the tool result is in the context, not in the loss


# ------------------------------------------------------------------------------------------------------ vLLM
class FakeVLLMGeneration:
    """TRL's vLLM backend as ``_generate_single_turn`` uses it (``sync_weights``; ``generate`` on token ids ->
    completion ids and per-token top-k log-probs), answering from a script: no GPU, no vLLM."""

    def __init__(self, tokenizer, script):
        self.tok, self.script = tokenizer, script
        self.synced = 0
        self.batches: list[int] = []
        # colocate mode: the tool loop reads the engine's context length to drop tool results that would overflow
        model_config = SimpleNamespace(max_model_len=2048)
        self.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_config=model_config))

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, num_generations, profiler):
        assert num_generations == 1
        self.batches.append(len(prompts))
        texts = [self.tok.decode(ids) for ids in prompts]
        turns = [
            self.script.after_tool(t) if "<tool_response>" in t else self.script.first(i, t)
            for i, t in enumerate(texts)
        ]
        completion_ids = [self.tok(turn, add_special_tokens=False)["input_ids"] for turn in turns]
        logprobs = [[[-0.5] for _ in ids] for ids in completion_ids]
        return prompts, completion_ids, logprobs, None


def test_vllm_generation_runs_the_tool_loop_and_ppo_keeps_tool_tokens_out(tool_checkpoint, tmp_path, pool):
    """use_vllm's path through TRL's tool loop (vLLM mocked as a scripted backend): every turn is generated by vLLM,
    the tool's output enters the next turn's prompt, vLLM's log-probs of tool tokens are 0-filled by TRL and stay
    out of the importance-sampling correction and the loss, and ReFT's old log-probs and values come from its own
    policy forward (TRL runs one for the correction)."""
    tok = tool_chat_tokenizer()
    script = ScriptedGeneration(
        tok,
        lambda i, t: tool_call("python", code="6 * 7") if i % 2 == 0 else "It is 42.<|im_end|>",
        lambda t: "The answer is " + t.rsplit("<tool_response>\n", 1)[1].split("\n", 1)[0] + ".<|im_end|>",
    )
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "What is 6 * 7?"}]] * 4, "answer": ["42"] * 4}
    )
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        dataset=dataset,
        reward_funcs=LastTurnReward(),
        tools=[python_tool(pool=pool)],
        config={"max_steps": 1, "num_iterations": 1, "max_completion_length": 300},
    )
    trainer.use_vllm = True  # what GRPOTrainer.__init__ sets up for use_vllm=True (colocate), minus the engine
    trainer.vllm_mode = "colocate"
    trainer._last_loaded_step = -1
    trainer.vllm_generation = FakeVLLMGeneration(tok, script)
    assert trainer._trl_computes_old_logps()  # vllm_importance_sampling_correction: TRL's rollout runs the forward
    batches = record_rollouts(trainer)
    with patch.object(trainer.model, "generate", side_effect=AssertionError("transformers generation used")):
        trainer.train()
    assert trainer.vllm_generation.batches == [4, 2] and trainer.vllm_generation.synced == 1
    (batch,) = batches
    tool_tokens = (batch["completion_mask"] * (1 - batch["tool_mask"])).bool()
    assert tool_tokens[[0, 2]].any(dim=1).all() and not tool_tokens[[1, 3]].any()
    assert "42" in tok.decode(batch["completion_ids"][0][tool_tokens[0]])
    assert torch.all(batch["sampling_per_token_logps"][tool_tokens] == 0)
    assert torch.all(batch["advantages"][tool_tokens] == 0) and torch.all(batch["returns"][tool_tokens] == 0)
    assert batch["scores"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert trainer.state.log_history[0]["tools/call_frequency"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------- tool traces for the warm-up
def test_tool_traces_of_the_embedded_task_match_what_the_sandbox_replies(pool):
    """Every step of the N-CoT annotations becomes a python call whose reply, run in the sandbox, is the
    annotation's own result; the rendered conversation parses back to the same calls (TRL's tool-call parser)."""
    from trl.chat_template_utils import add_response_schema

    from reft_trl.data import TaskConfig, load_synthetic
    from reft_trl.data.tool_traces import tool_trace

    rows = load_synthetic(
        "train", config=TaskConfig(n_train=12, n_test_iid=2, n_test_ood=2), seed=0, cot="nl", kind="sft"
    )
    traces = [tool_trace(r["completion"]) for r in rows]
    calls = [m["tool_calls"][0]["function"]["arguments"]["code"] for t in traces for m in t if m.get("tool_calls")]
    replies = [m["content"] for t in traces for m in t if m["role"] == "tool"]
    assert len(calls) >= 24 and run_tool_code(calls, pool=pool) == replies
    assert all(t[-1]["content"] == r["completion"].splitlines()[-1] for t, r in zip(traces, rows))

    tok = add_response_schema(tool_chat_tokenizer())
    conversation = [{"role": "user", "content": rows[0]["question"]}, *traces[0]]
    text = tok.apply_chat_template(conversation, tools=[python_tool(pool=pool)], tokenize=False)
    first_turn = text.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0] + "<|im_end|>"
    parsed = tok.parse_response(tok(first_turn, add_special_tokens=False)["input_ids"], prefix="")
    assert parsed["tool_calls"][0]["function"] == traces[0][0]["tool_calls"][0]["function"]


@pytest.mark.parametrize(
    ("cot", "message"),
    [
        ("3 + 4 = 7", "must end with the answer line"),
        ("3 + 4 = 8\nTherefore, the answer is: 8", "not exact integer arithmetic"),
        ("7 / 2 = 3\nTherefore, the answer is: 3", "not exact integer arithmetic"),
        ("three plus four\nTherefore, the answer is: 7", "not an arithmetic step"),
    ],
)
def test_tool_trace_refuses_what_it_cannot_compute(cot, message):
    from reft_trl.data.tool_traces import tool_trace

    with pytest.raises(ValueError, match=message):
        tool_trace(cot)


# ------------------------------------------------------------------ the rest of TRL's environment tests
def _grpo_test_kwargs():
    """The settings of TRL's environment tests: one step of one PPO epoch, rows in order (shuffle_dataset=False),
    a learning rate large enough to move the tiny model."""
    return {"config": {"max_steps": 1, "num_iterations": 1, "shuffle_dataset": False, "learning_rate": 0.1}}


def _changed(before, model) -> list[str]:
    return [n for n, p in before.items() if not torch.equal(p, model.get_parameter(n))]


def test_multiple_environments_route_each_row_to_its_own_tools(tool_checkpoint, tmp_path):
    """TRL's test_train_with_multiple_environments on ReFTTrainer: a dict environment_factory routes each row by its
    'environment' column (the rows have no 'prompt': reset() returns it), each rollout sees only its environment's
    tool, 'environment' is not passed to reset(), and the update changes the weights."""
    tok = tool_chat_tokenizer()
    seen, calls = {"counter": [], "echo": []}, {"increment": [], "shout": []}

    class Counter:
        def reset(self, **kwargs):
            seen["counter"].append(kwargs)
            return "Count."

        def increment(self, step: int) -> int:
            """
            Increment the internal counter.

            Args:
                step: Value to add to the counter.

            Returns:
                The updated counter value.
            """
            calls["increment"].append(step)
            return step

    class Echo:
        def reset(self, **kwargs):
            seen["echo"].append(kwargs)
            return "Echo."

        def shout(self, text: str) -> str:
            """
            Shout the given text.

            Args:
                text: Text to shout.

            Returns:
                The text in upper case.
            """
            calls["shout"].append(text)
            return text.upper()

    script = ScriptedGeneration(
        tok,
        lambda i, t: tool_call("increment", step=1) if "Count." in t else tool_call("shout", text="hi"),
        lambda t: "Done!<|im_end|>",
    )
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=LastTurnReward(),
        dataset=Dataset.from_dict({"environment": ["counter", "echo"] * 2, "answer": ["Done"] * 4}),
        environment_factory={"counter": Counter, "echo": Echo},
        **_grpo_test_kwargs(),
    )
    assert [t.__name__ for t in trainer._env_tools["counter"]] == ["increment"]
    assert [t.__name__ for t in trainer._env_tools["echo"]] == ["shout"]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with patch.object(trainer.model, "generate", side_effect=script):
        trainer.train()
    assert calls == {"increment": [1, 1], "shout": ["hi", "hi"]}
    log = trainer.state.log_history[0]
    assert log["tools/call_frequency"] == pytest.approx(1.0) and log["tools/failure_frequency"] == pytest.approx(0.0)
    assert seen["counter"] and seen["echo"]
    assert all("environment" not in kwargs for kwargs in seen["counter"] + seen["echo"])
    assert _changed(before, trainer.model)


def test_an_unknown_environment_is_refused_at_the_rollout(tool_checkpoint, tmp_path):
    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=LastTurnReward(),
        dataset=questions().add_column("environment", ["unknown"] * 4),
        environment_factory={"counter": CounterEnvironment},
        **_grpo_test_kwargs(),
    )
    with pytest.raises(ValueError, match="not among the environments"):
        trainer.train()


def test_an_environment_owns_the_data(tool_checkpoint, tmp_path):
    """TRL's test_train_with_environment_owned_data: no train_dataset, reset() returns the prompt, max_steps sets the
    length; ReFT trains on it (weights change) and scores the prompts the environment gave."""
    tok = tool_chat_tokenizer()
    seen = []

    class GuessTheWord:
        def reset(self, **kwargs):
            return "Guess the 5-letter word."

    def reward_len(prompts, completions, **kwargs):
        seen.extend(prompts)
        return [float(len(c[-1]["content"])) for c in completions]

    script = ScriptedGeneration(tok, lambda i, t: ["Done!", "DoneDone!"][i % 2] + "<|im_end|>", lambda t: "")
    trainer = ReFTTrainer(
        model=tool_checkpoint,
        reward_funcs=reward_len,
        args=ReFTConfig(**cpu_trainer_settings(tmp_path / "out", max_steps=2, learning_rate=0.1)),
        environment_factory=GuessTheWord,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with patch.object(trainer.model, "generate", side_effect=script):
        trainer.train()
    assert trainer.state.global_step == 2 and _changed(before, trainer.model)
    assert seen and all(p[-1]["content"] == "Guess the 5-letter word." for p in seen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environment_factory": "single", "max_steps": -1}, "max_steps"),  # env-owned data needs a length
        ({"environment_factory": "dict", "max_steps": 1}, "requires a `train_dataset`"),
        ({"max_steps": 1}, "`train_dataset` is required"),
    ],
)
def test_what_trl_refuses_without_a_train_dataset(tool_checkpoint, tmp_path, kwargs, message):
    factory = {"single": CounterEnvironment, "dict": {"a": CounterEnvironment, "b": CounterEnvironment}}
    extra = {}
    if "environment_factory" in kwargs:
        extra["environment_factory"] = factory[kwargs["environment_factory"]]
    with pytest.raises(ValueError, match=message):
        ReFTTrainer(
            model=tool_checkpoint,
            reward_funcs=LastTurnReward(),
            args=ReFTConfig(**cpu_trainer_settings(tmp_path / "out", max_steps=kwargs["max_steps"])),
            **extra,
        )


def test_environment_owned_rewards_with_mixed_environments(tool_checkpoint, tmp_path):
    """TRL's test_environment_owned_reward_mixed_environments: one reward column per environment class that owns a
    reward (two names of one class share it), weight 1, None for rollouts of other environments."""

    class Plain:  # no get_reward: scored by reward_funcs
        def reset(self, **kwargs): ...

        def play(self, x: int) -> int:
            """
            Play.

            Args:
                x: A value.

            Returns:
                The value.
            """
            return x

    class Scored(Plain):  # owns its reward
        def get_reward(self) -> float:
            return 1.0

    trainer = make_trainer(
        tool_checkpoint,
        tmp_path,
        reward_funcs=LastTurnReward(),
        dataset=Dataset.from_dict({"environment": ["scored", "scored2", "plain", "plain"], "answer": ["1"] * 4}),
        environment_factory={"scored": Scored, "scored2": Scored, "plain": Plain},
    )
    assert trainer.reward_func_names == ["last_turn_reward", "Scored"]
    assert trainer.reward_weights.tolist() == [1.0, 1.0]
    assert trainer.reward_funcs[-1](environments=[Scored(), Plain()]) == [1.0, None]


def test_malformed_tool_calls_end_the_turn_and_still_train(tool_checkpoint, tmp_path):
    """TRL's test_train_with_malformed_tool_calls: calls without a name, a misspelt tag, or invalid JSON are not run
    (no second generation turn), and the update still trains."""
    tok = tool_chat_tokenizer()
    malformed = [
        '<tool_call>\n{"arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>',
        '<toolcall>\n{"arguments": {"a": 3, "b": 4}}\n</toolcall><|im_end|>',
        '<tool_call>\n{"arguments": {a: 3, b: 4}}\n</tool_call><|im_end|>',
        "42<|im_end|>",
    ]
    script = ScriptedGeneration(tok, lambda i, t: malformed[i], lambda t: pytest.fail("a malformed call ran"))

    def multiply(a: int, b: int) -> int:
        """
        Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.

        Returns:
            The product of the two integers.
        """
        return a * b

    def content_length(completions, **kwargs):  # scores that differ, so that the update has a signal
        return [float(len(c[-1].get("content", ""))) for c in completions]

    trainer = make_trainer(
        tool_checkpoint, tmp_path, reward_funcs=content_length, tools=[multiply], **_grpo_test_kwargs()
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with patch.object(trainer.model, "generate", side_effect=script):
        trainer.train()
    assert script.calls == 1 and _changed(before, trainer.model)
