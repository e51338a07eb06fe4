"""Every field of TRL 1.16's ``GRPOConfig`` and what ``ReFTTrainer`` does with it: one table.

* ``honoured``: it acts in ReFT's rollout or update (``ReFTTrainer`` delegates the policy term of the loss to
  ``GRPOTrainer._compute_loss``, so the loss settings act exactly as in GRPO; see ``ReFTTrainer._compute_loss``);
* ``refused``: ``ReFTConfig.__post_init__`` raises when it is set to anything but the value in ``REFUSED``, saying
  why and what to use instead (fields refused only for some values, ``loss_type`` and ``scale_rewards``, are checked
  there too; this module is data);
* ``not applicable``: logging, hub and the like, where TRL's behaviour is unchanged.

``tests/test_ppo_knobs.py`` walks ``dataclasses.fields(GRPOConfig)`` and fails on any field missing here, so a TRL
release that adds a field is noticed; the table of docs/configuration.md is generated from this one (``python -m
reft_trl.trainers.grpo_fields``).
"""

from __future__ import annotations

HONOURED, REFUSED_KIND, NOT_APPLICABLE = "honoured", "refused", "not applicable"

_GEN = "TRL's generation (transformers or vLLM), unchanged"
_VLLM = "TRL's vLLM generation, unchanged; the value head never reaches the weight sync (not exercised in CI: no GPU)"
_LOSS = "GRPOTrainer's own policy term, which ReFTTrainer calls on its per-token advantages"

GRPO_FIELDS: dict[str, tuple[str, str]] = {
    # ---- model and training
    "learning_rate": (HONOURED, "the optimizer's learning rate (ReFT default 3e-7, the paper's)"),
    "remove_unused_columns": (NOT_APPLICABLE, "TRL keeps the dataset columns for the reward functions, unchanged"),
    "model_init_kwargs": (HONOURED, "used to load the policy, the separate critic and the reference model"),
    "trust_remote_code": (HONOURED, "used to load the policy and the reference model"),
    "router_aux_loss_coef": (HONOURED, "MoE router auxiliary loss, added by " + _LOSS),
    "disable_dropout": (HONOURED, "ReFT default True (the reference keeps the model in eval mode)"),
    "cast_lm_head_to_fp32": (HONOURED, "TRL's LM head; the value head reads the trunk's hidden states"),
    # ---- batches and generation
    "num_generations": (
        HONOURED,
        "samples per prompt: 1 for PPO (default), >= 2 for the group estimators; GAE "
        "gives each sample its own value trajectory",
    ),
    "num_generations_eval": (HONOURED, "samples per prompt in evaluation rollouts, as in GRPO"),
    "max_completion_length": (HONOURED, "generation budget (alias response_length); the max_len of dr_grpo"),
    "ds3_gather_for_generation": (HONOURED, _GEN),
    "shuffle_dataset": (HONOURED, "TRL's prompt sampler"),
    "pad_to_multiple_of": (HONOURED, "TRL's rollout padding"),
    "generation_batch_size": (HONOURED, "completions per rollout (or num_mini_batches / steps_per_generation)"),
    "steps_per_generation": (HONOURED, "micro-batches per PPO epoch; each epoch reshuffles them"),
    "temperature": (HONOURED, _GEN),
    "top_p": (HONOURED, _GEN),
    "top_k": (HONOURED, _GEN),
    "min_p": (HONOURED, _GEN),
    "generation_kwargs": (HONOURED, _GEN),
    "chat_template_kwargs": (HONOURED, _GEN),
    "repetition_penalty": (HONOURED, _GEN),
    "cache_implementation": (HONOURED, _GEN),
    "use_transformers_continuous_batching": (HONOURED, _GEN),
    "transformers_continuous_batching_config": (HONOURED, _GEN),
    "use_transformers_paged": (HONOURED, _GEN),
    "use_vllm": (HONOURED, _VLLM),
    "vllm_mode": (HONOURED, _VLLM),
    "vllm_model_impl": (HONOURED, _VLLM),
    "vllm_enable_sleep_mode": (HONOURED, _VLLM),
    "vllm_structured_outputs_regex": (HONOURED, _VLLM),
    "vllm_server_base_url": (HONOURED, _VLLM),
    "vllm_server_host": (HONOURED, _VLLM),
    "vllm_server_port": (HONOURED, _VLLM),
    "vllm_server_timeout": (HONOURED, _VLLM),
    "vllm_group_port": (HONOURED, _VLLM),
    "vllm_gpu_memory_utilization": (HONOURED, _VLLM),
    "vllm_max_model_length": (HONOURED, _VLLM),
    "vllm_tensor_parallel_size": (HONOURED, _VLLM),
    # ---- vLLM importance-sampling correction (sampler/trainer mismatch)
    "vllm_importance_sampling_correction": (HONOURED, "TRL's rollout computes the ratio; " + _LOSS + " applies it"),
    "vllm_importance_sampling_mode": (HONOURED, "token/sequence, truncate/mask: as in GRPO"),
    "vllm_importance_sampling_clip_min": (HONOURED, "as in GRPO"),
    "vllm_importance_sampling_clip_max": (HONOURED, "as in GRPO"),
    "vllm_importance_sampling_cap": (HONOURED, "deprecated alias of vllm_importance_sampling_clip_max (GRPOConfig)"),
    # ---- KL and reference
    "beta": (
        HONOURED,
        "KL coefficient (alias kl_coef) of the per-token penalty in the reward, never in the loss; "
        "the initial value of the adaptive controller (kl_target)",
    ),
    "use_bias_correction_kl": (
        NOT_APPLICABLE,
        "True or False: it corrects GRPO's KL term in the loss, which ReFT does not have (the KL is in the reward)",
    ),
    "sync_ref_model": (
        REFUSED_KIND,
        "ReFT's KL anchor is the fixed warm-up model; use kl_target (adaptive KL) to control the drift instead",
    ),
    "ref_model_mixup_alpha": (REFUSED_KIND, "only acts with sync_ref_model, which is refused"),
    "ref_model_sync_steps": (REFUSED_KIND, "only acts with sync_ref_model, which is refused"),
    # ---- the PPO update
    "num_iterations": (HONOURED, "PPO epochs over each rollout (alias num_ppo_epochs), each freshly shuffled"),
    "epsilon": (HONOURED, "policy clip range (alias cliprange)"),
    "epsilon_high": (HONOURED, "clip-higher (DAPO): upper clip 1 + epsilon_high, in " + _LOSS),
    "delta": (HONOURED, "two-sided clipping, verl's dual clip clip_ratio_c: the ratio is capped at delta"),
    "importance_sampling_level": (HONOURED, "token (PPO) or sequence (GSPO): the ratio of " + _LOSS),
    "loss_type": (
        HONOURED,
        "grpo (ReFT's default: token mean per sequence, then mean), bnpo, dr_grpo, dapo; the "
        "value loss is aggregated the same way. cispo, sapo, vespo and luspo are refused",
    ),
    "mask_truncated_completions": (HONOURED, "TRL's rollout masks completions without EOS: no reward, no loss"),
    "top_entropy_quantile": (HONOURED, "policy gradient on the highest-entropy tokens only, in " + _LOSS),
    "off_policy_mask_threshold": (HONOURED, "off-policy sequence masking, in " + _LOSS),
    "entropy_coef": (HONOURED, "entropy bonus, in " + _LOSS),
    "use_adaptive_entropy": (HONOURED, "adaptive entropy bonus, in " + _LOSS),
    "entropy_coef_min": (HONOURED, "adaptive entropy bonus, in " + _LOSS),
    "entropy_coef_max": (HONOURED, "adaptive entropy bonus, in " + _LOSS),
    "entropy_coef_delta": (HONOURED, "adaptive entropy bonus, in " + _LOSS),
    "entropy_target": (HONOURED, "adaptive entropy bonus, in " + _LOSS),
    "sapo_temperature_neg": (REFUSED_KIND, "only acts with loss_type='sapo', which is refused"),
    "sapo_temperature_pos": (REFUSED_KIND, "only acts with loss_type='sapo', which is refused"),
    "vespo_k_pos": (REFUSED_KIND, "only acts with loss_type='vespo', which is refused"),
    "vespo_lambda_pos": (REFUSED_KIND, "only acts with loss_type='vespo', which is refused"),
    "vespo_k_neg": (REFUSED_KIND, "only acts with loss_type='vespo', which is refused"),
    "vespo_lambda_neg": (REFUSED_KIND, "only acts with loss_type='vespo', which is refused"),
    # ---- rewards
    "reward_weights": (HONOURED, "weights of the reward functions' scores, summed into the PPO score"),
    "multi_objective_aggregation": (
        REFUSED_KIND,
        "ReFT sums the weighted raw scores (sum_then_normalize); "
        "normalize_then_sum is a GRPO group normalisation of each reward",
    ),
    "scale_rewards": (
        HONOURED,
        "with advantage_estimator='grpo': 'group' divides by the group's std, 'none' does "
        "not; 'batch' is refused. Other estimators refuse a non-default value",
    ),
    "max_tool_calling_iterations": (
        HONOURED,
        "tool-calling turns per rollout in TRL's tool loop (tools=, environment_factory=; None: until a turn "
        "calls no tool or max_completion_length is reached). Tool-result tokens are context, not actions: no loss, "
        "no KL, no value target; GAE runs over the model's tokens, one step across each tool call",
    ),
    # ---- logging and hub
    "log_completions": (NOT_APPLICABLE, "logging, unchanged"),
    "log_multimodal": (NOT_APPLICABLE, "logging, unchanged"),
    "num_completions_to_print": (NOT_APPLICABLE, "logging, unchanged"),
    "log_unique_prompts": (NOT_APPLICABLE, "logging, unchanged"),
    "log_completions_hub_repo": (NOT_APPLICABLE, "hub logging, unchanged"),
}

# The only value a refused field may have (GRPOConfig's default, under which it does nothing in ReFT).
REFUSED = {
    "sync_ref_model": False,
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
    "sapo_temperature_neg": 1.05,
    "sapo_temperature_pos": 1.0,
    "vespo_k_pos": 2.0,
    "vespo_lambda_pos": 3.0,
    "vespo_k_neg": 3.0,
    "vespo_lambda_neg": 2.0,
    "multi_objective_aggregation": "sum_then_normalize",
}


def refused_settings(config, trainer: str = "ReFTTrainer") -> list[str]:
    """The refused fields that ``config`` sets to anything but their value in :data:`REFUSED`, with the reasons (the
    trainers on ReFT's rollout loop refuse the same ones)."""
    return [
        f"{name}={getattr(config, name)!r} is not supported by {trainer}: {GRPO_FIELDS[name][1]}."
        for name, allowed in REFUSED.items()
        if getattr(config, name) != allowed
    ]


def markdown_table() -> str:
    """The table of docs/configuration.md: one line per GRPOConfig field."""
    lines = ["| `GRPOConfig` field | in ReFTTrainer | how |", "|---|---|---|"]
    for name, (kind, how) in GRPO_FIELDS.items():
        lines.append(f"| `{name}` | {kind} | {how} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
