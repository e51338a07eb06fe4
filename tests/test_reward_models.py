"""Reward models as rewards (RLHF): TRL's path for one-label models, RewardModel/ORMReward for chosen labels, the
multi-label trap, and the separate critic started from a reward model."""

from __future__ import annotations

import pytest
import torch
from conftest import CHAT_TEMPLATE
from peft import LoraConfig
from test_reft_trainer import RecordingReward, make_trainer, prompts_dataset, snapshot
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from reft_trl.models.reward_model import RewardModel, classifier_scores, reward_model_texts
from reft_trl.models.tiny import SPECIAL_TOKENS, char_tokenizer, save_tiny_llama, tiny_llama
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.orm import ORMReward, load_orm, load_orm_tokenizer, orm_scores, orm_text


def reversed_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer whose ids differ from the policy's (the characters in reverse order): scoring the
    policy's token ids with it, instead of re-tokenizing the decoded text, would give other scores."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    policy = char_tokenizer()
    chars = [
        t for t, _ in sorted(policy.get_vocab().items(), key=lambda kv: kv[1]) if t not in SPECIAL_TOKENS.values()
    ]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for ch in reversed(chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
    out.chat_template = CHAT_TEMPLATE
    return out


def save_classifier(path, tokenizer, num_labels=1, id2label=None, seed=0) -> LlamaForSequenceClassification:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        **({"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}),
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a score head large enough that the scores differ visibly between completions
        model.score.weight.normal_(0, 3.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model.eval()


def direct_logits(model, tokenizer, text: str) -> torch.Tensor:
    """The classifier's logits on one text, tokenized as TRL tokenizes reward-model inputs (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0].float()


def recorded_run(trainer):
    """Train ``trainer`` and return (reward calls, per-function rewards of the first rollout, its weighted scores)."""
    rewards, scores = [], []
    calculate, local = trainer._calculate_rewards, trainer._local_scores

    def record_rewards(*args, **kwargs):
        out = calculate(*args, **kwargs)
        rewards.append(out.detach().clone())
        return out

    def record_scores(batch_size):
        out = local(batch_size)
        scores.append(out.detach().clone())
        return out

    trainer._calculate_rewards, trainer._local_scores = record_rewards, record_scores
    trainer.train()
    return rewards[0], scores[0]


# ------------------------------------------------------------------------- what the reward model reads
def bos_adding(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """``tokenizer`` that adds its BOS token in front of every text, as most LLM tokenizers do."""
    from tokenizers import processors

    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return tokenizer


def policy_that_sometimes_stops(path, seed=0) -> str:
    """A tiny policy (the char tokenizer) whose EOS logit is about 1 on every position (the mean direction of its
    last hidden states), so that of 16 sampled 10-token completions some end with EOS and some are cut."""
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = tiny_llama(tok, seed=seed)
    prompts = tok(list(prompts_dataset()["prompt"]), return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(**prompts, max_new_tokens=10, do_sample=True, pad_token_id=tok.pad_token_id)
        hidden = model.model(out).last_hidden_state[:, prompts.input_ids.shape[1] - 1 :]
        direction = hidden.reshape(-1, hidden.shape[-1]).mean(0)
        model.lm_head.weight[tok.eos_token_id] = 1.25 * direction / direction.norm() ** 2
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


class CompletionRecorder:
    """A reward of 0 that remembers the prompts, completions and completion token ids TRL passed it."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids})
        return [0.0] * len(prompts)


@pytest.fixture(scope="module")
def reward_trainer_rm(tmp_path_factory):
    """A one-label reward model trained for a few steps by TRL's own RewardTrainer on in-memory preference data,
    with a tokenizer other than the policy's (other ids, and it adds BOS). Returns (path, tokenizer, model, the
    RewardTrainer)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    path = tmp_path_factory.mktemp("rm-trained")
    tok = bos_adding(reversed_char_tokenizer())
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    prompts = [f"Q: {i} + {i % 5} = ?\nA:" for i in range(16)]
    data = Dataset.from_dict(
        {"prompt": prompts, "chosen": [f" {i + i % 5}" for i in range(16)], "rejected": [" no idea"] * 16}
    )
    args = RewardConfig(
        output_dir=str(path / "run"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to="none", use_cpu=True, bf16=False, save_strategy="no", gradient_checkpointing=False,
    )  # fmt: skip
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    assert trainer.train_dataset[0]["chosen_ids"][0] == tok.bos_token_id  # it trained on BOS ... EOS
    assert trainer.train_dataset[0]["chosen_ids"][-1] == tok.eos_token_id
    trainer.train()
    trainer.save_model(str(path))
    tok.save_pretrained(path)
    return str(path), tok, trainer.model.eval(), trainer


def test_a_reward_model_reads_what_reward_trainer_trained_it_on(reward_trainer_rm, tmp_path):
    """ReFTTrainer's score of each completion = the RewardTrainer-trained model applied to RewardTrainer's own
    tokenization of ``prompt + completion``: EOS appended when the completion ended with EOS, BOS from the reward
    tokenizer, for terminated and truncated completions alike (a truncated one gets no EOS)."""
    from datasets import Dataset
    from trl.data_utils import _tokenize

    rm_path, rm_tok, rm, reward_trainer = reward_trainer_rm
    policy = policy_that_sometimes_stops(tmp_path / "policy")
    recorder = CompletionRecorder()
    trainer = ReFTTrainer(
        model=policy,
        reward_funcs=[rm_path, recorder],
        reward_processing_classes=[rm_tok, None],
        args=ReFTConfig(**_settings(tmp_path)),
        train_dataset=prompts_dataset(),
    )
    assert trainer.args.reward_model_tokenization == "reward_trainer"  # the default
    rewards, _ = recorded_run(trainer)
    call = recorder.calls[0]
    eos = trainer.processing_class.eos_token_id
    ended = [ids[-1] == eos for ids in call["completion_ids"]]
    assert 0 < sum(ended) < len(ended), "the rollout must hold terminated and truncated completions"

    expected, trl_reading = [], []
    for prompt, completion, stopped in zip(call["prompts"], call["completions"], ended):
        if stopped:  # RewardTrainer's own preprocessing of a pair whose chosen side is this completion
            row = Dataset.from_dict({"prompt": [prompt], "chosen": [completion], "rejected": [completion]})
            ids = reward_trainer._prepare_dataset(row, rm_tok, reward_trainer.args, "check")[0]["chosen_ids"]
            assert ids[0] == rm_tok.bos_token_id and ids[-1] == rm_tok.eos_token_id
        else:  # the same tokenization (trl.data_utils._tokenize, special tokens added), without the EOS
            ids = _tokenize(rm_tok, prompt + completion)["input_ids"]
            assert ids[0] == rm_tok.bos_token_id and ids[-1] != rm_tok.eos_token_id
        with torch.no_grad():
            expected.append(rm(input_ids=torch.tensor([ids])).logits[0, 0].item())
        trl_reading.append(direct_logits(rm, rm_tok, prompt + completion)[0].item())
    torch.testing.assert_close(rewards[:, 0], torch.tensor(expected), rtol=1e-4, atol=1e-4)
    # GRPOTrainer's reading (decoded text, no BOS, no EOS) gives other scores: the test can tell the two apart
    assert max(abs(a - b) for a, b in zip(expected, trl_reading)) > 1e-3


def test_grpo_trainer_tokenization_is_trls_reading(reward_trainer_rm, tmp_path):
    """reward_model_tokenization="grpo_trainer" scores as GRPOTrainer does: the decoded text, no special tokens, no
    EOS -- for a reward model given by path and for the same model wrapped as RewardModel; the default wrapper
    follows the trainer's setting."""
    rm_path, rm_tok, rm, _ = reward_trainer_rm
    recorder = CompletionRecorder()
    wrapped = RewardModel(rm_path, processing_class=rm_tok)
    assert wrapped.tokenization is None
    trainer = ReFTTrainer(
        model=policy_that_sometimes_stops(tmp_path / "policy"),
        reward_funcs=[rm_path, wrapped, recorder],
        reward_processing_classes=[rm_tok, None, None],
        args=ReFTConfig(**_settings(tmp_path, reward_model_tokenization="grpo_trainer")),
        train_dataset=prompts_dataset(),
    )
    assert wrapped.tokenization == "grpo_trainer"
    rewards, _ = recorded_run(trainer)
    call = recorder.calls[0]
    expected = [direct_logits(rm, rm_tok, p + c)[0].item() for p, c in zip(call["prompts"], call["completions"])]
    torch.testing.assert_close(rewards[:, 0], torch.tensor(expected), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rewards[:, 1], torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_reward_model_texts():
    tok = bos_adding(reversed_char_tokenizer())
    tok.chat_template = CHAT_TEMPLATE
    plain = (["Q: 1\nA:", "Q: 2\nA:"], [" 1", " 9"], [True, False])
    assert reward_model_texts(tok, *plain) == (["Q: 1\nA: 1</s>", "Q: 2\nA: 9"], True)
    assert reward_model_texts(tok, *plain, tokenization="grpo_trainer") == (["Q: 1\nA: 1", "Q: 2\nA: 9"], False)
    assert reward_model_texts(tok, ["a"], ["b</s>"], [True])[0] == ["ab</s>"]  # never a second EOS
    chat = ([[{"role": "user", "content": "1"}]], [[{"role": "assistant", "content": "2"}]], [True])
    for tokenization in ("reward_trainer", "grpo_trainer"):  # the chat template, as RewardTrainer renders it
        assert reward_model_texts(tok, *chat, tokenization=tokenization) == (["user: 1\nassistant: 2\n"], False)
    with pytest.raises(ValueError, match="reward_model_tokenization must be one of"):
        ReFTConfig(output_dir="out", use_cpu=True, report_to="none", reward_model_tokenization="raw")
    with pytest.raises(ValueError, match="tokenization must be one of"):
        reward_model_texts(tok, *plain, tokenization="raw")


# ------------------------------------------------------------------------------------------- TRL's own path
def test_reward_model_path_with_its_own_tokenizer_mixed_with_a_rule_reward(tiny_checkpoint, tmp_path):
    """A one-label reward model given by path (TRL loads it), with a tokenizer other than the policy's, weighted with
    a rule reward: each completion's RM score is the RM's output on the text it reads, and PPO's score is the
    weighted sum."""
    rm_tok = reversed_char_tokenizer()
    rm = save_classifier(tmp_path / "rm", rm_tok)
    rule = RecordingReward()
    trainer = ReFTTrainer(
        model=tiny_checkpoint,
        reward_funcs=[str(tmp_path / "rm"), rule],
        reward_processing_classes=[rm_tok, None],
        args=ReFTConfig(**_settings(tmp_path, reward_weights=[0.5, 2.0])),
        train_dataset=prompts_dataset(),
    )
    rewards, scores = recorded_run(trainer)
    call = rule.calls[0]
    ended = [ids[-1] == trainer.processing_class.eos_token_id for ids in call["completion_ids"]]
    texts, _ = reward_model_texts(rm_tok, call["prompts"], call["completions"], ended)
    expected_rm = [direct_logits(rm, rm_tok, t)[0].item() for t in texts]
    assert len(set(round(x, 4) for x in expected_rm)) > 1  # the completions differ, and so do their scores
    torch.testing.assert_close(rewards[:, 0], torch.tensor(expected_rm), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rewards[:, 1], torch.tensor(call["scores"]))
    torch.testing.assert_close(scores, 0.5 * rewards[:, 0] + 2.0 * rewards[:, 1])
    logged = trainer.state.log_history[0]
    assert logged["rewards/rm/mean"] == pytest.approx(sum(expected_rm) / len(expected_rm), abs=1e-4)


def _settings(tmp_path, **overrides):
    from conftest import cpu_trainer_settings

    return cpu_trainer_settings(
        tmp_path / "out", **{"max_completion_length": 10, "seed": 0, "max_steps": 1, **overrides}
    )


# ----------------------------------------------------------------------------------- several labels: the trap
@pytest.mark.parametrize("given", ["path", "model"])
def test_a_multi_label_classifier_without_a_label_is_refused(tiny_checkpoint, tmp_path, given):
    model = save_classifier(tmp_path / "orm", char_tokenizer(), num_labels=2, id2label={0: "incorrect", 1: "correct"})
    reward = str(tmp_path / "orm") if given == "path" else model
    with pytest.raises(ValueError, match=r"classifier with 2 labels .*incorrect.*correct.*RewardModel\(model, label="):
        make_trainer(tiny_checkpoint, tmp_path, reward=[RecordingReward(), reward])


def test_reward_model_label_must_exist(tmp_path):
    save_classifier(tmp_path / "rm", char_tokenizer(), num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="no label named 'd'; its labels are"):
        RewardModel(tmp_path / "rm", label="d")
    with pytest.raises(ValueError, match="label=3 is out of range"):
        RewardModel(tmp_path / "rm", label=3)
    assert RewardModel(tmp_path / "rm", label="c").label == 2


def test_reward_models_under_peft(tiny_checkpoint, tmp_path):
    """Under PEFT: RewardModel(label=..., probability=True) scores softmax P(label) of the RM's own tokenization, a
    one-label RM by path its logit; the policy is a LoRA adapter; the reward models are not trained."""
    rm_tok = reversed_char_tokenizer()
    rm = save_classifier(tmp_path / "rm", rm_tok, num_labels=3, id2label={0: "bad", 1: "ok", 2: "good"}, seed=1)
    plain = save_classifier(tmp_path / "plain", rm_tok, seed=2)
    reward = RewardModel(tmp_path / "rm", label="good", probability=True)
    rule = RecordingReward()
    trainer = ReFTTrainer(
        model=tiny_checkpoint,
        reward_funcs=[rule, reward, str(tmp_path / "plain")],
        args=ReFTConfig(**_settings(tmp_path, reward_weights=[1.0, 1.0, 0.5])),
        train_dataset=prompts_dataset(),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    rm_before = snapshot(reward.model)
    policy_before = snapshot(trainer.model)
    rewards, scores = recorded_run(trainer)
    call = rule.calls[0]
    expected = [
        direct_logits(rm, rm_tok, p + c).softmax(-1)[2].item() for p, c in zip(call["prompts"], call["completions"])
    ]
    torch.testing.assert_close(rewards[:, 1], torch.tensor(expected), rtol=1e-4, atol=1e-5)
    expected_plain = [
        direct_logits(plain, rm_tok, p + c)[0].item() for p, c in zip(call["prompts"], call["completions"])
    ]
    torch.testing.assert_close(rewards[:, 2], torch.tensor(expected_plain), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores, rewards[:, 0] + rewards[:, 1] + 0.5 * rewards[:, 2])
    assert all(torch.equal(p, snapshot(reward.model)[n]) for n, p in rm_before.items())
    after = snapshot(trainer.model)
    assert any(not torch.equal(p, after[n]) for n, p in policy_before.items() if "lora_" in n)


def test_reward_model_renders_conversations_with_its_chat_template(tmp_path):
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    model = save_classifier(tmp_path / "rm", tok)
    reward = RewardModel(tmp_path / "rm")
    prompts = [[{"role": "user", "content": "2 + 2 = ?"}], [{"role": "user", "content": "hi"}]]
    completions = [[{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "hello there"}]]
    texts = reward.texts(prompts, completions)
    assert texts[0] == "user: 2 + 2 = ?\nassistant: 4\n"
    expected = [direct_logits(model, tok, t)[0].item() for t in texts]
    assert reward(prompts=prompts, completions=completions) == pytest.approx(expected, abs=1e-5)


# -------------------------------------------------------------------------------------------------- the ORM
def test_orm_reward_is_the_orm_scoring_of_the_recipes(tiny_checkpoint, tmp_path):
    """ORMReward(path) = P(correct) exactly as recipes/orm.py and recipes/evaluate.py score (orm_scores on
    orm_text), for plain and chat prompts -- not the logits[:, 0] TRL would read."""
    tokenizer = load_orm_tokenizer(tiny_checkpoint)
    orm = load_orm(tiny_checkpoint, tokenizer)
    with torch.no_grad():
        orm.score.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(0))
    orm.save_pretrained(tmp_path / "orm")
    tokenizer.save_pretrained(tmp_path / "orm")
    reward = ORMReward(str(tmp_path / "orm"))
    prompts = ["Question:\n1 + 1\nAnswer reasoning:\n", "Question:\n2 + 5\nAnswer reasoning:\n"]
    completions = ["1 + 1 = 2\nTherefore, the answer is: 2", "2 + 5 = 8\nTherefore, the answer is: 8"]
    expected = orm_scores(orm, tokenizer, [orm_text(p, c) for p, c in zip(prompts, completions)], progress=False)
    got = reward(prompts=prompts, completions=completions)
    assert got == pytest.approx(expected, abs=1e-6)
    trl_reading = [direct_logits(orm, tokenizer, p + c)[0].item() for p, c in zip(prompts, completions)]
    assert got != pytest.approx(trl_reading, abs=1e-3)

    chat = [[{"role": "user", "content": "1 + 1"}], [{"role": "user", "content": "2 + 5"}]]
    answers = [[{"role": "assistant", "content": c}] for c in completions]
    expected = orm_scores(orm, tokenizer, [orm_text(p, a[0]["content"], tokenizer) for p, a in zip(chat, answers)])
    assert reward(prompts=chat, completions=answers) == pytest.approx(expected, abs=1e-6)


def test_classifier_scores_truncates_from_the_left(tmp_path):
    tok = char_tokenizer()
    model = save_classifier(tmp_path / "rm", tok)
    text = "a long prefix that gets cut, then the answer: 42"
    (cut,) = classifier_scores(model, tok, [text], max_length=12)
    assert cut == pytest.approx(direct_logits(model, tok, text[-12:])[0].item(), abs=1e-5)
    assert cut != pytest.approx(direct_logits(model, tok, text)[0].item(), abs=1e-4)


# ------------------------------------------------------------------------------------------ the critic's start
def test_separate_critic_starts_from_a_reward_model(tiny_checkpoint, tmp_path):
    """value_model='separate' with value_model_path=<reward model>: the critic is the RM's trunk, and its value head
    the RM's score layer (as TRL 1.12's examples built the value model)."""
    from transformers import AutoTokenizer

    rm = save_classifier(tmp_path / "rm", AutoTokenizer.from_pretrained(tiny_checkpoint))
    trainer = make_trainer(
        tiny_checkpoint, tmp_path, value_model="separate", value_model_path=str(tmp_path / "rm"), max_steps=1
    )
    critic = trainer.accelerator.unwrap_model(trainer.model).critic
    torch.testing.assert_close(critic.v_head.weight, rm.score.weight)
    assert torch.all(critic.v_head.bias == 0)  # the RM's score layer has no bias
    torch.testing.assert_close(critic.backbone.embed_tokens.weight, rm.model.embed_tokens.weight)
    before = snapshot(critic)
    trainer.train()
    assert any(not torch.equal(p, snapshot(critic)[n]) for n, p in before.items())


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"value_model_path": "/nonexistent/critic"}, ValueError, "needs value_model='separate'"),
        (
            {"value_model": "separate", "value_model_path": "/nonexistent/critic"},
            FileNotFoundError,
            "value_model_path='/nonexistent/critic': no model there",
        ),
    ],
)
def test_bad_value_model_paths_are_clear_errors(tiny_checkpoint, tmp_path, config, error, message):
    with pytest.raises(error, match=message):
        make_trainer(tiny_checkpoint, tmp_path, **config)


def test_a_critic_that_cannot_read_the_policys_token_ids_is_refused(tiny_checkpoint, tmp_path):
    """Another tokenizer (same size, other ids), or -- without tokenizer files -- a smaller vocabulary."""
    save_classifier(tmp_path / "other", reversed_char_tokenizer())
    with pytest.raises(ValueError, match="has another tokenizer than the policy .* must share the policy's tokenizer"):
        make_trainer(tiny_checkpoint, tmp_path, value_model="separate", value_model_path=str(tmp_path / "other"))

    small = char_tokenizer()
    save_classifier(tmp_path / "rm", small)
    for file in (tmp_path / "rm").glob("*token*"):
        file.unlink()
    big = char_tokenizer(vocab_size=len(small) + 50)
    save_tiny_llama(tmp_path / "policy", big)
    with pytest.raises(ValueError, match="vocabulary of 104 tokens, the policy 154"):
        make_trainer(str(tmp_path / "policy"), tmp_path, value_model="separate", value_model_path=str(tmp_path / "rm"))


def test_a_peft_adapter_as_the_critics_start_is_refused(tiny_checkpoint, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a PEFT adapter; the critic starts from a full checkpoint. Merge it"):
        make_trainer(tiny_checkpoint, tmp_path, value_model="separate", value_model_path=str(tmp_path / "adapter"))


def test_separate_critic_under_peft_is_refused_with_the_alternative(tiny_checkpoint, tmp_path):
    with pytest.raises(NotImplementedError, match="not supported with PEFT .* use value_model='shared'"):
        ReFTTrainer(
            model=tiny_checkpoint,
            reward_funcs=RecordingReward(),
            args=ReFTConfig(**_settings(tmp_path, value_model="separate")),
            train_dataset=prompts_dataset(),
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        )


def test_reft_trainer_restores_an_old_trl_value_head(tiny_checkpoint, tmp_path):
    """ReFTTrainer(model=path) on a checkpoint saved by old TRL's AutoModelForCausalLMWithValueHead: the policy and
    its ``v_head.summary`` head are both restored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    hidden = lm.config.hidden_size
    head = {"v_head.summary.weight": torch.full((1, hidden), 0.25), "v_head.summary.bias": torch.tensor([-1.5])}
    lm.save_pretrained(tmp_path / "old", state_dict={**lm.state_dict(), **head})
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "old")
    trainer = make_trainer(str(tmp_path / "old"), tmp_path)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    torch.testing.assert_close(policy.v_head.weight, head["v_head.summary.weight"])
    torch.testing.assert_close(policy.v_head.bias, head["v_head.summary.bias"])


# ------------------------------------------------------------------------------------ what is and is not a classifier
def test_a_causal_lm_checkpoint_path_is_a_reward_model_with_a_fresh_head(tiny_checkpoint, tmp_path):
    """TRL 1.12's descriptiveness example used a causal LM as reward model path: TRL loads it as a classifier with a
    fresh one-label head. A causal LM's config says num_labels=2 (transformers' default) without being a 2-label
    classifier: it must not be refused as one."""
    trainer = make_trainer(tiny_checkpoint, tmp_path, reward=[RecordingReward(), tiny_checkpoint], max_steps=1)
    rm = trainer.reward_funcs[1]
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    trainer.train()


def test_what_is_not_a_sequence_classifier_is_refused_clearly(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match="LlamaForCausalLM: its logits are per token"):
        make_trainer(tiny_checkpoint, tmp_path, reward=[RecordingReward(), lm])
    with pytest.raises(ValueError, match=r"is not a sequence classifier \(architectures=\['LlamaForCausalLM'\]\)"):
        RewardModel(tiny_checkpoint, label=0)
    with pytest.raises(ValueError, match="needs a sequence classifier, got a LlamaForCausalLM"):
        RewardModel(lm)
    model = save_classifier(tmp_path / "rm", char_tokenizer())
    model.config._name_or_path = ""
    with pytest.raises(ValueError, match="needs its tokenizer"):
        RewardModel(model)
    assert RewardModel(model, processing_class=char_tokenizer()).label == 0


def test_reward_model_renders_chat_with_the_trainers_chat_template_kwargs(tiny_checkpoint, tmp_path):
    tok = char_tokenizer()
    tok.chat_template = "{% if loud %}!{% endif %}" + CHAT_TEMPLATE
    save_classifier(tmp_path / "rm", tok)
    prompts, completions = [[{"role": "user", "content": "hi"}]], [[{"role": "assistant", "content": "yo"}]]
    assert RewardModel(tmp_path / "rm").texts(prompts, completions) == ["user: hi\nassistant: yo\n"]
    own = RewardModel(tmp_path / "rm", chat_template_kwargs={"loud": True})
    assert own.texts(prompts, completions) == ["!user: hi\nassistant: yo\n"]
    inherited = RewardModel(tmp_path / "rm")
    make_trainer(tiny_checkpoint, tmp_path, reward=[RecordingReward(), inherited], chat_template_kwargs={"loud": True})
    assert inherited.texts(prompts, completions) == ["!user: hi\nassistant: yo\n"]
