"""RolloutConfig: what every trainer on ReFT's rollout loop is configured with (ReFT and Online-ST extend it).

A ``GRPOConfig`` that samples one completion per question by default (GRPO needs >= 2), with the paper's
optimizer defaults, the default answer reward's settings, the greedy accuracy evaluation's settings, and TRL <= 1.12
``PPOConfig`` names: the ones that alias a ``GRPOConfig`` field are accepted, the others refused with a pointer to the
migration guide (:mod:`reft_trl.trainers.ppo_config_names`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import ClassVar

from trl import GRPOConfig

from reft_trl.models.reward_model import TOKENIZATIONS, check_tokenization
from reft_trl.trainers import ppo_config_names
from reft_trl.trainers.accuracy_eval import AccuracyEvalArguments
from reft_trl.trainers.fsdp_cpu import cpu_fsdp_launch, keep_configured_state, set_up_cpu_fsdp_state
from reft_trl.trainers.grpo_fields import refused_settings


class _OneSamplePerPrompt(int):
    """``1`` for everything except GRPOConfig's ``num_generations < 2`` guard.

    GRPO needs a group of samples per prompt; PPO (and ReFT) samples one completion per question. Passing this int
    through ``GRPOConfig.__post_init__`` keeps every other check TRL runs there (batch divisibility, vLLM settings) and
    is replaced by a plain ``1`` right after.
    """

    def __lt__(self, other):
        return False if other == 2 else int(self) < other


@dataclass
class RolloutConfig(GRPOConfig, AccuracyEvalArguments):
    """Configuration shared by the trainers on :class:`~reft_trl.trainers.rollout.RolloutTrainer`: one completion
    per question by default, the paper's learning rate (constant) and dropout off, the default answer reward's
    ``partial_reward`` and ``program_timeout``, and the greedy accuracy evaluation."""

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
    num_iterations: int | None = field(
        default=None,
        metadata={"help": "Epochs over each rollout, each with a fresh shuffle (alias `num_ppo_epochs`; default 2)."},
    )
    max_completion_length: int | None = field(
        default=None, metadata={"help": "Maximum generated tokens (alias `response_length`; default 512)."}
    )

    # ---- TRL <= 1.12 PPOConfig names of the fields above (ppo_config_names.ALIASES)
    kl_coef: float | None = field(default=None, metadata={"help": "Alias of `beta`."})
    num_ppo_epochs: int | None = field(default=None, metadata={"help": "Alias of `num_iterations`."})
    response_length: int | None = field(default=None, metadata={"help": "Alias of `max_completion_length`."})
    num_mini_batches: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps per epoch over a rollout. Sets `steps_per_generation = num_mini_batches * "
            "gradient_accumulation_steps` (default: 1 mini-batch, i.e. `steps_per_generation = "
            "gradient_accumulation_steps`)."
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

    # ---- reward models (sequence classifiers in reward_funcs, and reft_trl.RewardModel)
    reward_model_tokenization: str = field(
        default="reward_trainer",
        metadata={
            "help": "What a reward model reads. 'reward_trainer' (default): as TRL's RewardTrainer trained it -- "
            "for plain-text prompts prompt + completion + the reward tokenizer's EOS when the completion ended with "
            "EOS (none when truncated), with its special tokens (BOS); conversations through its chat template. "
            "'grpo_trainer': what GRPOTrainer feeds reward models (the decoded text, no EOS, no special tokens), "
            "for reward models trained that way.",
            "choices": list(TOKENIZATIONS),
        },
    )

    _pair_defaults: ClassVar[dict] = {"beta": 0.05, "num_iterations": 2, "max_completion_length": 512}
    """Values of the aliased pairs when neither name is set (a subclass may change them)."""

    def __new__(cls, *args, **kwargs):
        # A 1.12 PPOConfig name that is not a field here gets a TypeError pointing to the migration guide instead of
        # Python's bare "unexpected keyword argument". In __new__, not __init__: the dataclass decorator of every
        # subclass writes a new __init__, but they all inherit this.
        ppo_config_names.refuse(cls, kwargs)
        return super().__new__(cls)

    def __post_init__(self):
        self._resolve_aliases()
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
        if self.beta < 0:
            raise ValueError(f"kl_coef/beta must be >= 0, got {self.beta}.")
        check_tokenization(self.reward_model_tokenization, "reward_model_tokenization")
        if self.num_generations is None or self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        self._refuse_bad_numbers()
        self._check_settings()
        trainer = type(self).__name__.removesuffix("Config") + "Trainer"
        problems = refused_settings(self, trainer)
        if problems:
            raise ValueError(" ".join(problems))
        if self.use_liger_kernel:
            raise ValueError(f"{trainer} computes its own loss: use_liger_kernel is not supported.")
        # The trainers read what they need from their own forwards (ReFT's values leave through a backbone hook, not
        # the model's outputs), so DDP's unused-parameter search would mark the value head "unused" and fail when its
        # gradient arrives; every parameter does get a gradient, so the search is not needed.
        if self.ddp_find_unused_parameters:
            raise ValueError(
                f"ddp_find_unused_parameters=True is not supported by {trainer}: the value head's output does not "
                "pass through the model's outputs, so DDP would wrongly mark it unused. Leave it unset."
            )
        self.ddp_find_unused_parameters = False

        if cpu_fsdp_launch():  # FSDP2 over gloo without GPUs: accelerate does not set it up itself
            set_up_cpu_fsdp_state(self.ddp_backend)
            self.use_cpu = True
            self.accelerator_config = keep_configured_state(self.accelerator_config)

        one_sample = self.num_generations == 1
        if one_sample:
            self.num_generations = _OneSamplePerPrompt(1)
        try:
            super().__post_init__()
        finally:
            if one_sample:
                self.num_generations = 1

    def _check_settings(self) -> None:
        """A subclass's own validation, after the aliases are resolved and before GRPOConfig's."""

    def _resolve_aliases(self) -> None:
        """Each 1.12 name and its GRPOConfig field end up equal: the one that was set, else ``_pair_defaults``."""
        own = {f.name for f in fields(self)}
        for alias, name in ppo_config_names.ALIASES.items():
            if alias not in own:
                continue
            alias_value, value = getattr(self, alias), getattr(self, name)
            if alias_value is not None and value is not None and alias_value != value:
                raise ValueError(
                    f"Contradictory settings: {alias}={alias_value!r} and {name}={value!r} are the same parameter "
                    f"({alias} is the PPOConfig name of {name}). Set only one."
                )
            resolved = value if value is not None else alias_value
            resolved = self._pair_defaults[name] if resolved is None else resolved
            setattr(self, name, resolved)
            setattr(self, alias, resolved)

    def _refuse_bad_numbers(self) -> None:
        """Refuse settings that would train on nonsense without failing: a program timeout that is not a positive
        number of seconds (the sandbox would only refuse it at the first P-CoT reward, mid-run), and non-finite
        ``reward_weights`` (a NaN weight turned its function's every score into 0: the weighted sum skips NaN)."""
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


__all__ = ["RolloutConfig"]
