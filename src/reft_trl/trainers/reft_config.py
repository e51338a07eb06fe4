"""ReFTConfig: GRPOConfig with the PPO knobs ReFT needs, and defaults that reproduce the paper."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from trl import GRPOConfig

from reft_trl.core import KL_ESTIMATORS, OUTCOME_ESTIMATORS
from reft_trl.trainers import ppo_config_names
from reft_trl.trainers.grpo_fields import refusals

ADVANTAGE_WHITENING = ("global", "local", "none")
VALUE_MODELS = ("shared", "separate")
ADVANTAGE_ESTIMATORS = ("gae", *OUTCOME_ESTIMATORS)
GROUP_ESTIMATORS = ("reinforce_plus_plus_baseline", "grpo", "rloo")


class _OneSamplePerPrompt(int):
    """``1`` for everything except GRPOConfig's ``num_generations < 2`` guard.

    GRPO needs a group of samples per prompt; PPO (and ReFT) samples one completion per question. Passing this int
    through ``GRPOConfig.__post_init__`` keeps every other check TRL runs there (batch divisibility, vLLM settings) and
    is replaced by a plain ``1`` right after.
    """

    def __lt__(self, other):
        return False if other == 2 else int(self) < other


# PPOConfig names from trl<=1.12 -> the GRPOConfig field that carries the value here.
PPO_ALIASES = {
    "kl_coef": "beta",
    "cliprange": "epsilon",
    "num_ppo_epochs": "num_iterations",
    "response_length": "max_completion_length",
}


@dataclass
class ReFTConfig(GRPOConfig):
    r"""
    Configuration for [`ReFTTrainer`]: PPO with a shared-trunk value head, KL-shaped token rewards and GAE.

    Everything in [`~trl.GRPOConfig`] (generation, vLLM, PEFT, DeepSpeed, logging) applies. Defaults reproduce the
    ReFT paper's reference implementation: one sample per question, temperature 1.0, `top_k=0`, `top_p=1.0`, two PPO
    epochs per rollout with a fresh shuffle of mini-batches per epoch, clip 0.2, value clip 0.2, `vf_coef=5`,
    `gamma=1.0`, `lam=0.95`, a k1 KL penalty **in the reward** (never in the loss), advantage whitening over the global
    batch, per-sequence token-mean then batch-mean loss normalisation, constant learning rate, dropout off.

    Names users know from TRL's removed `PPOConfig` are accepted: `kl_coef` (= `beta`), `cliprange` (= `epsilon`),
    `num_ppo_epochs` (= `num_iterations`), `response_length` (= `max_completion_length`), `num_mini_batches`
    (optimizer steps per PPO epoch: `steps_per_generation = num_mini_batches * gradient_accumulation_steps`),
    `cliprange_value`, `vf_coef`, `gamma`, `lam`, `whiten_rewards`, `missing_eos_penalty`, `kl_estimator`, and
    GRPOConfig's own `temperature` and `ds3_gather_for_generation`. Setting both names of a pair to different values is
    an error. The other `PPOConfig` fields (`total_episodes`, `stop_token`, `sft_model_path`, the computed batch sizes,
    ...) are refused with a `TypeError` saying what to use instead (`reft_trl.trainers.ppo_config_names`); the
    mapping of every one is `docs/migrating-from-trl-ppo.md`.

    Batch arithmetic: each process generates `per_device_train_batch_size * steps_per_generation` completions per
    rollout (`num_generations` per question); each PPO epoch walks them in `steps_per_generation` micro-batches, and
    an optimizer step happens every `gradient_accumulation_steps` micro-batches.

    Every `GRPOConfig` field is honoured, refused here with the reason, or not applicable: see
    `reft_trl.trainers.grpo_fields`. The PPO knobs of verl and OpenRLHF: `advantage_estimator` (GAE or a critic-free
    estimator), `kl_target`/`kl_horizon` (adaptive KL), `critic_warmup_steps`, and GRPO's own `loss_type`,
    `epsilon_high` (clip-higher) and `delta` (dual clip).
    """

    # ---- defaults overridden from GRPOConfig / TrainingArguments
    learning_rate: float = field(
        default=3e-7, metadata={"help": "AdamW learning rate (the paper: 3e-7 at 7B, 3e-6 for 125M models)."}
    )
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "The paper keeps the learning rate constant."}
    )
    num_generations: int | None = field(
        default=1,
        metadata={"help": "Completions sampled per question and rollout. ReFT/PPO samples 1 (GRPO needs >= 2)."},
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Disable dropout (the reference keeps the model in eval mode)."}
    )
    beta: float | None = field(
        default=None,
        metadata={
            "help": "KL coefficient of the per-token penalty in the reward (alias `kl_coef`; default 0.05, the "
            "paper's N-CoT value; 0.01 for P-CoT). Unlike GRPO, there is never a KL term in the loss. 0 disables the "
            "reference model."
        },
    )
    epsilon: float | None = field(
        default=None, metadata={"help": "PPO policy clip range (alias `cliprange`; default 0.2)."}
    )
    num_iterations: int | None = field(
        default=None,
        metadata={
            "help": "PPO epochs over each rollout, each with a fresh shuffle (alias `num_ppo_epochs`; default 2)."
        },
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Maximum generated tokens (alias `response_length`; default 512)."}
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Aggregation of the policy (and value) loss: 'grpo' (token mean per sequence, then mean over "
            "sequences: the paper's; GRPOConfig's own default is 'dapo'), 'bnpo' (token mean per micro-batch), "
            "'dr_grpo' (token sum / (B * max_completion_length)) or 'dapo' (token sum / tokens of the accumulation "
            "window)."
        },
    )

    # ---- PPO names (aliases and new knobs)
    kl_coef: float | None = field(default=None, metadata={"help": "Alias of `beta`."})
    cliprange: float | None = field(default=None, metadata={"help": "Alias of `epsilon`."})
    num_ppo_epochs: int | None = field(default=None, metadata={"help": "Alias of `num_iterations`."})
    response_length: int | None = field(default=None, metadata={"help": "Alias of `max_completion_length`."})
    num_mini_batches: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps per PPO epoch. Sets `steps_per_generation = num_mini_batches * "
            "gradient_accumulation_steps` (default: 1 mini-batch, i.e. `steps_per_generation = "
            "gradient_accumulation_steps`)."
        },
    )
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value loss around old values."})
    vf_coef: float = field(default=5.0, metadata={"help": "Weight of the value loss: loss = pg + vf_coef * vf."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    kl_estimator: str = field(
        default="k1",
        metadata={"help": "Per-token KL estimator in the reward: 'k1' (reference), 'k2' or 'k3' (always >= 0)."},
    )
    advantage_whitening: str = field(
        default="global",
        metadata={
            "help": "Whiten advantages over the response tokens of the 'global' batch (all processes; reference), "
            "each process's 'local' rollout, or 'none'."
        },
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten the token rewards (keeping their mean) before GAE."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the score of completions that hit the length limit without an EOS."},
    )
    value_model: str = field(
        default="shared",
        metadata={
            "help": "'shared': value head on the policy's trunk (ReFT). 'separate': a critic with its own trunk, "
            "forward and optimizer state, initialised from `value_model_path` (default: the policy's checkpoint)."
        },
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "With value_model='separate': the checkpoint the critic starts from, e.g. the reward model, as "
            "TRL 1.12's PPO examples did (it must read the policy's token ids: same tokenizer). A one-label "
            "sequence classifier also gives the value head its score layer. Default: the policy's checkpoint."
        },
    )
    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": "'gae' (value head, the paper's) or a critic-free estimator with verl's definitions: "
            "'reinforce_plus_plus', 'reinforce_plus_plus_baseline', 'grpo' (std normalisation by `scale_rewards`), "
            "'rloo'. Critic-free runs attach no value head and compute no value loss; the group estimators need "
            "num_generations >= 2."
        },
    )
    kl_target: float | None = field(
        default=None,
        metadata={
            "help": "Adaptive KL controller (Ziegler et al. 2019; TRL <= 0.11 `adap_kl_ctrl`, verl "
            "`kl_ctrl.type=adaptive`): target KL per sequence. None keeps `kl_coef` fixed. The coefficient starts "
            "at `kl_coef` and is logged as `objective/kl_coef`."
        },
    )
    kl_horizon: int = field(
        default=10000, metadata={"help": "Horizon of the adaptive KL controller (in samples), as in verl."}
    )
    critic_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "The first N optimizer steps train only the value head (or separate critic); the policy is "
            "unchanged (verl `critic_warmup`, OpenRLHF `freezing_actor_steps`)."
        },
    )
    value_head_init_std: float = field(
        default=0.0,
        metadata={
            "help": "Std of a fresh value head's weights; 0 initialises it to zero (V = 0 at the first rollout). Used "
            "only when the checkpoint has no value head (e.g. an SFT warm-up model)."
        },
    )

    # ---- default reward (used when the trainer gets no reward_funcs): reft_trl.rewards.AnswerReward, reading each
    # row's `answer`, `answer_format` and `cot` columns (as reft_trl.data's loaders write them)
    partial_reward: float = field(
        default=0.1,
        metadata={"help": "Reward of an extracted but wrong answer (1 correct, 0 unparsable). 0 disables it."},
    )
    program_timeout: float = field(
        default=5.0, metadata={"help": "Wall-clock timeout (s) of each sandboxed P-CoT program."}
    )

    # ---- greedy answer accuracy at each evaluation (when the trainer gets an accuracy_dataset)
    accuracy_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Generation budget of the accuracy evaluation (default: max_completion_length)."},
    )
    accuracy_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the accuracy evaluation (default: per_device_eval_batch_size)."}
    )

    def __new__(cls, *args, **kwargs):
        # A 1.12 PPOConfig name that is not a field here gets a TypeError pointing to the migration guide instead of
        # Python's bare "unexpected keyword argument". In __new__, not __init__: the dataclass decorator of every
        # subclass writes a new __init__, but they all inherit this.
        ppo_config_names.refuse(cls, kwargs)
        return super().__new__(cls)

    # Values of the aliased pairs when neither name is set (a subclass may change them).
    _pair_defaults = {"beta": 0.05, "epsilon": 0.2, "num_iterations": 2, "max_completion_length": 512}

    def __post_init__(self):
        defaults = self._pair_defaults
        for alias, name in PPO_ALIASES.items():
            alias_value, value = getattr(self, alias), getattr(self, name)
            if alias_value is not None and value is not None and alias_value != value:
                raise ValueError(
                    f"Contradictory settings: {alias}={alias_value!r} and {name}={value!r} are the same parameter "
                    f"({alias} is the PPOConfig name of {name}). Set only one."
                )
            resolved = value if value is not None else alias_value
            resolved = defaults[name] if resolved is None else resolved
            setattr(self, name, resolved)
            setattr(self, alias, resolved)

        if self.accuracy_max_new_tokens is None:
            self.accuracy_max_new_tokens = self.max_completion_length

        if self.num_mini_batches is not None:
            spg = self.num_mini_batches * self.gradient_accumulation_steps
            if self.steps_per_generation is not None and self.steps_per_generation != spg:
                raise ValueError(
                    f"Contradictory settings: num_mini_batches={self.num_mini_batches} with "
                    f"gradient_accumulation_steps={self.gradient_accumulation_steps} means steps_per_generation={spg}, "
                    f"but steps_per_generation={self.steps_per_generation}. Set only one."
                )
            if self.generation_batch_size is not None:
                raise ValueError("Set either num_mini_batches or generation_batch_size, not both.")
            self.steps_per_generation = spg

        checks = {
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
            "advantage_whitening": (self.advantage_whitening, ADVANTAGE_WHITENING),
            "value_model": (self.value_model, VALUE_MODELS),
            "advantage_estimator": (self.advantage_estimator, ADVANTAGE_ESTIMATORS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}.")
        if self.value_model_path is not None and (self.value_model != "separate" or self.advantage_estimator != "gae"):
            raise ValueError(
                f"value_model_path={self.value_model_path!r} is the separate critic's checkpoint: it needs "
                f"value_model='separate' and advantage_estimator='gae' (got value_model={self.value_model!r}, "
                f"advantage_estimator={self.advantage_estimator!r})."
            )
        if self.beta < 0:
            raise ValueError(f"kl_coef/beta must be >= 0, got {self.beta}.")
        self._refuse_bad_numbers()
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}.")
        if self.num_generations is None or self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        if self.advantage_estimator in GROUP_ESTIMATORS and self.num_generations < 2:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} compares the samples of one prompt: it needs "
                f"num_generations >= 2, got {self.num_generations}."
            )
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_horizon <= 0 or self.beta == 0):
            raise ValueError(
                f"The adaptive KL controller needs kl_target > 0, kl_horizon > 0 and an initial kl_coef > 0, got "
                f"kl_target={self.kl_target}, kl_horizon={self.kl_horizon}, kl_coef={self.beta}."
            )
        if self.critic_warmup_steps < 0:
            raise ValueError(f"critic_warmup_steps must be >= 0, got {self.critic_warmup_steps}.")
        if self.critic_warmup_steps and self.advantage_estimator != "gae":
            raise ValueError(
                f"critic_warmup_steps needs a critic: advantage_estimator={self.advantage_estimator!r} has none."
            )
        if self.critic_warmup_steps and self.weight_decay:
            raise ValueError(
                "critic_warmup_steps with weight_decay > 0 would still change the policy during the warm-up (AdamW "
                "decays every parameter of its one optimizer); set weight_decay=0 or critic_warmup_steps=0."
            )
        problems = refusals(self)
        if problems:
            raise ValueError(" ".join(problems))
        if self.use_liger_kernel:
            raise ValueError("ReFTTrainer computes its own loss: use_liger_kernel is not supported.")
        # The values leave the forward through the backbone hook, not through the model's outputs. DDP's unused-
        # parameter search walks the graph from the outputs, so it would mark the value head "unused" and then fail
        # when its gradient arrives. Every parameter does get a gradient in PPO, so the search is not needed.
        if self.ddp_find_unused_parameters:
            raise ValueError(
                "ddp_find_unused_parameters=True is not supported by ReFTTrainer: the value head's output does not "
                "pass through the model's outputs, so DDP would wrongly mark it unused. Leave it unset."
            )
        self.ddp_find_unused_parameters = False

        one_sample = self.num_generations == 1
        if one_sample:
            self.num_generations = _OneSamplePerPrompt(1)
        try:
            super().__post_init__()
        finally:
            if one_sample:
                self.num_generations = 1

    def _refuse_bad_numbers(self) -> None:
        """Refuse settings that would train on nonsense without failing: a negative (or NaN) clip range, value-loss
        weight or value-head init std, a program timeout that is not a positive number of seconds (the sandbox would
        only refuse it at the first P-CoT reward, mid-run), and non-finite ``reward_weights`` (a NaN weight turned
        its function's every score into 0, because the weighted sum skips NaN)."""
        for name, alias in (
            ("epsilon", "cliprange"),
            ("cliprange_value", None),
            ("vf_coef", None),
            ("value_head_init_std", None),
        ):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                names = f"{alias}/{name}" if alias else name
                raise ValueError(f"{names} must be >= 0, got {value}.")
        timeout = self.program_timeout
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"program_timeout must be a positive number of seconds, got {timeout}.")
        weights = self.reward_weights
        if weights is not None:
            bad = [(i, w) for i, w in enumerate(weights) if not isinstance(w, numbers.Real) or not math.isfinite(w)]
            if bad:
                raise ValueError(
                    f"reward_weights must be finite numbers, got {list(weights)} (index {bad[0][0]}: {bad[0][1]!r}). "
                    "A NaN weight would silently turn its function's scores into 0 (the weighted sum skips NaN)."
                )
