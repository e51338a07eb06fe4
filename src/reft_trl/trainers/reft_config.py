"""ReFTConfig: the rollout config with the PPO knobs ReFT needs, and defaults that reproduce the paper."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from reft_trl.core import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, LOSS_TYPE_AGGREGATION
from reft_trl.trainers.rollout_config import RolloutConfig

ADVANTAGE_WHITENING = ("global", "local", "none")
VALUE_MODELS = ("shared", "separate")


@dataclass
class ReFTConfig(RolloutConfig):
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

    # ---- defaults overridden from GRPOConfig (the others: RolloutConfig)
    epsilon: float | None = field(
        default=None, metadata={"help": "PPO policy clip range (alias `cliprange`; default 0.2)."}
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
    cliprange: float | None = field(default=None, metadata={"help": "Alias of `epsilon`."})
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

    _pair_defaults: ClassVar[dict] = {**RolloutConfig._pair_defaults, "epsilon": 0.2}

    def _check_settings(self) -> None:
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
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}.")
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
        problems = self._loss_settings_problems()
        if problems:
            raise ValueError(" ".join(problems))

    def _loss_settings_problems(self) -> list[str]:
        """``loss_type`` and ``scale_rewards`` are refused for some values only."""
        problems = []
        if self.loss_type not in LOSS_TYPE_AGGREGATION:
            problems.append(
                f"loss_type={self.loss_type!r} is not supported by ReFTTrainer: its objective is defined for GRPO's "
                f"sequence-level advantages and is untested with per-token GAE advantages; use one of "
                f"{tuple(LOSS_TYPE_AGGREGATION)}."
            )
        if self.scale_rewards == "batch":
            problems.append(
                "scale_rewards='batch' is not supported by ReFTTrainer; use 'group' (std of each prompt's samples) or "
                "'none' with advantage_estimator='grpo'."
            )
        elif self.scale_rewards not in ("group", True) and self.advantage_estimator != "grpo":
            problems.append(
                f"scale_rewards={self.scale_rewards!r} only acts with advantage_estimator='grpo' (it is "
                f"{self.advantage_estimator!r})."
            )
        return problems


__all__ = ["ReFTConfig"]
