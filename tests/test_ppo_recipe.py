"""recipes/ppo.py end to end on CPU: a tiny policy learns to please a tiny reward model whose score has a closed form;
local datasets (JSONL file, <split>.jsonl folder, save_to_disk), conversational prompts, rewards by name, and the
recipe's errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CHAT_TEMPLATE, assert_deployable
from datasets import Dataset, DatasetDict
from transformers import LlamaConfig, LlamaForSequenceClassification

from reft_trl.models.reward_model import reward_model_texts
from reft_trl.models.tiny import char_tokenizer, save_tiny_llama

TARGET = "a"
RMS_EPS = 1e-6
CPU = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--gradient_checkpointing", "false",
       "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0"]  # fmt: skip


# ------------------------------------------------------------------------------------------- the reward model
def target_fraction_reward_model(tokenizer, target: str = TARGET) -> LlamaForSequenceClassification:
    """A one-layer Llama reward model, weights set by hand, scoring a text by the fraction ``p`` of its characters
    that are ``target``: ``score = p / sqrt((1 + p^2) / 4 + eps)`` (0 at p = 0, increasing, ~1.41 at p = 1).

    Embeddings are one-hot (dim 0: the target, dim 1: any other token), so the input RMSNorm (weight sqrt(1/4 + eps))
    passes them unchanged; q = k = 0 makes the attention uniform over the causal prefix, and v/o copy dim 0 into dim 2:
    at the last token, dim 2 holds ``p`` over the whole text. The MLP is zero. The final RMSNorm of
    ``[one-hot, p, 0]`` divides by ``sqrt((1 + p^2) / 4 + eps)``, and the score head reads dim 2."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=4,
        intermediate_size=4,
        rms_norm_eps=RMS_EPS,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    target_id = tokenizer.convert_tokens_to_ids(target)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 1] = 1.0
        embeddings[target_id] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        layer = model.model.layers[0]
        layer.input_layernorm.weight.fill_(math.sqrt(0.25 + RMS_EPS))
        layer.post_attention_layernorm.weight.fill_(1.0)
        layer.self_attn.v_proj.weight[0, 0] = 1.0
        layer.self_attn.o_proj.weight[2, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.score.weight[0, 2] = 1.0
    return model


def closed_form_score(text: str) -> float:
    p = text.count(TARGET) / len(text)
    return p / math.sqrt((1 + p * p) / 4 + RMS_EPS)


def reward_model_scores(model, tokenizer, texts: list[str], add_special_tokens: bool = False) -> list[float]:
    """The RM's scores: right padding, logits[:, 0] at the last non-pad token."""
    batch = tokenizer(
        texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=add_special_tokens
    )
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny policy and the target-fraction reward model, both with the char tokenizer (and a chat template)."""
    root = tmp_path_factory.mktemp("ppo-models")
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    save_tiny_llama(root / "policy", tokenizer)
    reward_model = target_fraction_reward_model(tokenizer)
    reward_model.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return root / "policy", root / "rm", reward_model, tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def arithmetic_prompts(n: int = 64) -> list[str]:
    """Prompts without the target character: every target in a rollout comes from the completion."""
    return [f"{i} + {i % 7} =" for i in range(n)]


def run_recipe(load_recipe, *argv: str):
    ppo = load_recipe("ppo")
    return ppo.main(*ppo.make_parser().parse_args_and_config(args=[*CPU, *argv]))


# -------------------------------------------------------------------------------------------------- end to end
def test_reward_model_closed_form():
    tokenizer = char_tokenizer()
    model = target_fraction_reward_model(tokenizer)
    texts = ["1 + 1 =", "aaaa", "banana split", "3 + 3 = a", "a"]
    assert reward_model_scores(model, tokenizer, texts) == pytest.approx(
        [closed_form_score(t) for t in texts], abs=1e-5
    )


@pytest.mark.slow
def test_ppo_recipe_raises_the_reward_models_score(load_recipe, tiny_models, tmp_path):
    """24 PPO steps (16 prompts each, one PPO epoch) on a JSONL file: the tiny random policy's mean RM score goes
    from ~0.02 (a random character is rarely the target) to ~0.9 (completions all target characters)."""
    policy, rm, reward_model, tokenizer = tiny_models
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in arithmetic_prompts()])
    trainer = run_recipe(
        load_recipe,
        "--model_name_or_path", str(policy), "--reward_model_path", str(rm), "--dataset_name", str(data),
        "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "16", "--num_ppo_epochs", "1",
        "--response_length", "8", "--max_steps", "24", "--learning_rate", "2e-2", "--kl_coef", "0.01",
        "--temperature", "1.0",
    )  # fmt: skip
    # TRL names a reward model's metrics after its folder: rewards/<name>/mean is the RM's raw mean score per rollout.
    scores = [e["rewards/rm/mean"] for e in trainer.state.log_history if "rewards/rm/mean" in e]
    assert len(scores) == 24
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert first < 0.1 and last > 0.6 and last - first > 0.5, scores
    last_step = [e for e in trainer.state.log_history if "rewards/rm/mean" in e][-1]
    assert last_step["objective/scores"] == pytest.approx(scores[-1])  # the RM is the only reward

    # The scores of the last rollout are the RM's output on what RewardTrainer would have trained it on: prompt +
    # decoded completion, + EOS when the completion ended before response_length (the char tokenizer adds no BOS).
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    logged = list(trainer._logs["rewards"]["rm"])
    ended = [len(tokenizer(c, add_special_tokens=False).input_ids) < 8 for c in completions]
    texts, special = reward_model_texts(tokenizer, prompts, completions, ended)
    assert len(texts) == 16 and all(TARGET in c for c in completions)
    assert logged == pytest.approx(reward_model_scores(reward_model, tokenizer, texts, special), abs=1e-5)
    cut = [(score, p + c) for score, p, c, stop in zip(logged, prompts, completions, ended) if not stop]
    assert [score for score, _ in cut] == pytest.approx([closed_form_score(t) for _, t in cut], abs=1e-5)
    assert (tmp_path / "out" / "log_history.json").is_file()
    assert_deployable(tmp_path / "out", value_model="shared")


def test_conversational_prompts_from_a_saved_dataset_dict_with_a_weighted_user_function(
    load_recipe, tiny_models, tmp_path, monkeypatch
):
    """Conversational prompts (chat messages) from a DatasetDict.save_to_disk folder, scored by the RM (through its
    tokenizer's chat template) and a user function given as module:function, weighted in that order."""
    policy, rm, _, _ = tiny_models
    (tmp_path / "my_rewards.py").write_text(
        "def length_bonus(completions, **kwargs):\n    return [float(len(c[-1]['content'])) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    prompts = [[{"role": "user", "content": p}] for p in arithmetic_prompts(8)]
    DatasetDict(train=Dataset.from_dict({"prompt": prompts})).save_to_disk(str(tmp_path / "chat"))
    trainer = run_recipe(
        load_recipe,
        "--model_name_or_path", str(policy), "--reward_model_path", str(rm),
        "--reward_funcs", "my_rewards:length_bonus", "--reward_weights", "1.0", "0.5",
        "--dataset_name", str(tmp_path / "chat"), "--output_dir", str(tmp_path / "out"),
        "--per_device_train_batch_size", "4", "--response_length", "6", "--max_steps", "1",
    )  # fmt: skip
    completions = list(trainer._logs["completion"])
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
    log = trainer.state.log_history[0]
    expected = log["rewards/rm/mean"] + 0.5 * log["rewards/length_bonus/mean"]
    assert log["objective/scores"] == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------------------- rewards by name
def test_reward_functions_by_name(load_recipe, tmp_path, monkeypatch):
    import trl.rewards

    from reft_trl.rewards import AnswerReward
    from reft_trl.trainers import ReFTConfig

    ppo = load_recipe("ppo")
    (tmp_path / "user_rewards.py").write_text(
        "def mine(completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ReFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, partial_reward=0.25)
    script = ppo.PPOScriptArguments(
        reward_model_path="org/rm",  # a YAML scalar: one path
        reward_funcs=["answer", "think_format_reward", "user_rewards:mine", "user_rewards.mine"],
    )
    funcs = ppo.reward_functions(script, args)
    assert funcs[0] == "org/rm"  # reward models first, as paths: TRL loads them
    assert isinstance(funcs[1], AnswerReward) and funcs[1].partial_reward == 0.25
    assert funcs[2] is trl.rewards.think_format_reward
    assert funcs[3].__name__ == funcs[4].__name__ == "mine"
    assert "accuracy_reward" in ppo.trl_reward_names() and "get_soft_overlong_punishment" not in ppo.trl_reward_names()


# ----------------------------------------------------------------------------------------------------- datasets
def test_local_dataset_forms(load_recipe, tmp_path):
    ppo = load_recipe("ppo")

    def load(name, **kwargs):
        return ppo.load_prompt_dataset(ppo.PPOScriptArguments(dataset_name=str(name), **kwargs))

    rows = [{"prompt": "1 + 1 =", "answer": "2"}, {"prompt": "2 + 2 =", "answer": "4"}]
    # a file: the training split, under whatever name the config gives it
    data = load(write_jsonl(tmp_path / "p.jsonl", rows), dataset_train_split="descriptiveness")
    assert list(data) == ["descriptiveness"] and data["descriptiveness"]["answer"] == ["2", "4"]
    # a folder of <split>.jsonl files
    (tmp_path / "splits").mkdir()
    write_jsonl(tmp_path / "splits" / "train.jsonl", rows)
    write_jsonl(tmp_path / "splits" / "validation.jsonl", rows[:1])
    data = load(tmp_path / "splits")
    assert sorted(data) == ["train", "validation"] and len(data["validation"]) == 1
    # Dataset.save_to_disk: the training split
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert len(load(tmp_path / "saved")["train"]) == 2


# ------------------------------------------------------------------------------------------------------- errors
def base_argv(tiny_checkpoint, tmp_path, data):
    return ["--model_name_or_path", tiny_checkpoint, "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]


def test_no_reward_is_an_error(load_recipe, tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(ValueError, match="PPO needs a reward: pass --reward_model_path .* --reward_funcs"):
        run_recipe(load_recipe, *base_argv(tiny_checkpoint, tmp_path, data))


def test_unknown_reward_function_is_an_error(load_recipe, tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    argv = [*base_argv(tiny_checkpoint, tmp_path, data), "--reward_funcs", "answer", "nonsense"]
    with pytest.raises(ValueError, match=r"Unknown reward function 'nonsense'.*'answer'.*'accuracy_reward'"):
        run_recipe(load_recipe, *argv)


def test_missing_prompt_column_names_the_dataset_and_its_columns(load_recipe, tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "1 + 1 =", "answer": "2"}])
    argv = [*base_argv(tiny_checkpoint, tmp_path, data), "--reward_funcs", "answer"]
    with pytest.raises(ValueError, match=r"q\.jsonl' \(split 'train'\) has no 'prompt' column; its columns are "):
        run_recipe(load_recipe, *argv)


def test_missing_eval_split_is_an_error(load_recipe, tiny_checkpoint, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    argv = [*base_argv(tiny_checkpoint, tmp_path, data), "--reward_funcs", "answer", "--eval_strategy", "steps"]
    with pytest.raises(
        ValueError, match=r"no split 'test' for evaluation \(splits: \['train'\]\).*--eval_strategy no"
    ):
        run_recipe(load_recipe, *argv)


def test_conversational_prompts_need_a_chat_template(load_recipe, tmp_path):
    tokenizer = char_tokenizer()  # no chat template
    save_tiny_llama(tmp_path / "plain", tokenizer, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    data = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    argv = [*base_argv(str(tmp_path / "plain"), tmp_path, data), "--reward_funcs", "answer"]
    with pytest.raises(ValueError, match="conversational prompts but the tokenizer of .* has no chat template"):
        run_recipe(load_recipe, *argv)
