"""The RL math of ReFT as pure tensor functions: no trainer state, no distributed code.

Conventions (shared by every function here): tensors are completion-only, shape ``(B, T)``, right-padded;
``mask`` is 1 on completion tokens (the EOS token included) and 0 on padding. In a multi-turn (tool-calling)
completion it is also 0 on the tokens the model did not write (tool results, between model tokens): those are not
actions, so they get no reward, advantage, return or loss, and the recursions (:func:`gae`,
:func:`discounted_returns`) run over the model's tokens in order, skipping them (see :func:`gae` for how
``gamma``/``lam`` apply across a tool call). ``logprobs`` are the log-probabilities of the sampled tokens. Read top to bottom, this module is one PPO update:

    rewards              = token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns  = gae(rewards, old_values, mask, gamma, lam)
    advantages           = masked_whiten(advantages, mask)            # over the global batch
    loss                 = policy_loss(...) + vf_coef * value_loss(...)

**What trains and what is the reference.** ``ReFTTrainer`` computes the rollout side with these functions --
``token_rewards`` (with ``kl_penalty``), ``gae`` or ``outcome_advantages``, ``masked_whiten``,
``AdaptiveKLController`` -- and the value term of the loss with ``value_loss`` (aggregated by ``agg_loss`` under
``LOSS_TYPE_AGGREGATION``); ``ppo_statistics`` gives its logged metrics. The **policy** term that trains is
``trl.GRPOTrainer._compute_loss`` on these advantages, so that every ``GRPOConfig`` loss setting acts as in GRPO;
``policy_loss`` here is its definition written out, the reference the tests hold that term to (and the function
verl users know).

Numerics follow the ReFT authors' reference implementation (see ``tests/test_core.py``, which reproduces their
values to 1e-5). The PPO knobs users of verl and OpenRLHF expect (clip-higher, dual clip, the four loss aggregations,
the critic-free outcome estimators, the adaptive KL controller) use verl's names and definitions
(``verl/trainer/ppo/core_algos.py``, reproduced to 1e-6 in float64).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
GROUP_ESTIMATORS = ("reinforce_plus_plus_baseline", "grpo", "rloo")
"""The critic-free estimators that compare the samples of one prompt (they need several per prompt)."""
OUTCOME_ESTIMATORS = ("reinforce_plus_plus", *GROUP_ESTIMATORS)
"""The critic-free estimators of :func:`outcome_advantages`."""
ADVANTAGE_ESTIMATORS = ("gae", *OUTCOME_ESTIMATORS)
"""``gae`` (:func:`gae`, with a learned value function) and the critic-free ones."""
LOSS_TYPE_AGGREGATION = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "seq-mean-token-sum",  # summed, then divided by the accumulation window's token count
}
"""TRL's ``loss_type`` -> the :func:`agg_loss` mode that aggregates like it (the value loss follows the policy term)."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy.

    ``k1`` is ``logp - logp_ref`` (unbiased, can be negative; what the ReFT reference uses), ``k2`` is
    ``0.5 * (logp - logp_ref)**2`` and ``k3`` is ``exp(logp_ref - logp) - (logp_ref - logp) - 1`` (unbiased and
    always >= 0; Schulman's estimator). All three are 0 where the two policies agree. ``abs`` is ``|logp - logp_ref|``.
    verl calls them ``kl``, ``mse``, ``low_var_kl`` and ``abs``.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"Unknown kl_estimator {estimator!r}; expected one of {KL_ESTIMATORS}.")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position where ``mask`` is 1 in each row (0 for an all-zero row)."""
    positions = torch.arange(mask.size(-1), device=mask.device)
    return (mask.bool() * (positions + 1)).argmax(-1)


def token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> torch.Tensor:
    """KL-shaped token rewards: ``r_t = -kl_coef * kl_t`` on every completion token, plus the sequence's score on its
    last completion token (the EOS token, or the last token when generation was truncated).

    ``ref_logprobs=None`` means no reference model (the KL term is zero). A row whose mask is all zero gets no reward.
    """
    mask = mask.to(logprobs.dtype)
    if ref_logprobs is None or kl_coef == 0:
        rewards = torch.zeros_like(logprobs)
    else:
        rewards = -kl_coef * kl_penalty(logprobs, ref_logprobs, kl_estimator) * mask
    has_tokens = mask.sum(-1) > 0
    rows = torch.arange(mask.size(0), device=mask.device)
    terminal = scores.to(rewards.dtype) * has_tokens
    return rewards.index_put((rows, last_token_index(mask)), terminal, accumulate=True)


def discounted_suffix_sum(x: torch.Tensor, discount: float) -> torch.Tensor:
    """``y_t = sum_l discount**l * x_{t+l}`` along the last dimension (zero beyond the end).

    A log-depth (Hillis-Steele) scan: ceil(log2 T) vectorised steps instead of a Python loop over T tokens. After the
    step with offset k, ``y_t`` holds the first 2k terms of the sum, so every term enters with exactly the weight the
    recursive ``y_t = x_t + discount * y_{t+1}`` gives it.
    """
    y = x.clone()
    T = y.size(-1)
    weight, offset = discount, 1
    while offset < T and weight != 0:
        y[..., :-offset] = y[..., :-offset] + weight * y[..., offset:]
        weight, offset = weight * weight, offset * 2
    return y


def pack_left(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's masked entries (``mask`` 1) to the left, keeping their order; returns ``(packed, order)``.

    ``packed[..., j] = x[..., order[..., j]]``; :func:`unpack` puts a packed tensor back. A right-padded mask is
    already packed (``order`` is the identity). This is how the recursions below run over the model's own tokens
    of a multi-turn completion: tool-result tokens (``mask`` 0 between model tokens) are taken out of the sequence,
    not treated as its end.
    """
    # a stable sort of (1 - mask): masked positions first, each group in its original order
    order = torch.sort((mask == 0).to(torch.int8), dim=-1, stable=True).indices
    return x.gather(-1, order), order


def unpack(packed: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_left`: ``out[..., order[..., j]] = packed[..., j]``."""
    return torch.empty_like(packed).scatter_(-1, order, packed)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions, which may interleave tokens that are not
    actions (tool results in a multi-turn rollout: ``mask`` 0 between model tokens).

    Over the model's tokens ``t_1 < t_2 < ... < t_n`` of a row (``mask`` 1), in order:
    ``delta_k = r_{t_k} + gamma * V_{t_{k+1}} - V_{t_k}`` with ``V_{t_{n+1}} = 0`` (the episode ends at the last
    model token), ``A_{t_k} = sum_l (gamma * lam)**l * delta_{k+l}`` and ``R = A + V``. A tool call is one step of
    the environment: the tool's output is part of the transition from the state before it (the last model token
    before the call) to the state after it (the first model token after), so ``gamma`` and ``lam`` apply once
    across it, however many tokens the output has, and the value of that next state is bootstrapped, not 0. This is
    verl's multi-turn GAE (``compute_gae_advantage_return``, which skips the values and TD errors of observation
    tokens of its ``response_mask``); without tool tokens it is the usual recursion.

    Outputs are 0 where ``mask`` is 0 (padding and tool tokens); whatever ``values`` and ``rewards`` hold there is
    ignored (a reward belongs on a model token: :func:`token_rewards` puts the score on the last one).
    """
    mask = mask.to(values.dtype)
    if mask.numel() and bool(((mask[..., 1:] - mask[..., :-1]) > 0).any()):  # a hole: pack the model tokens left
        packed_mask, order = pack_left(mask, mask)
        advantages, returns = gae(rewards.gather(-1, order), values.gather(-1, order), packed_mask, gamma, lam)
        return unpack(advantages, order), unpack(returns, order)
    values = values * mask
    next_values = torch.nn.functional.pad(values[..., 1:], (0, 1))
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = discounted_suffix_sum(deltas, gamma * lam) * mask
    returns = (advantages + values) * mask
    return advantages, returns


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    *,
    eps: float = 1e-8,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries, with the unbiased variance.

    ``shift_mean=False`` adds the mean back (only the scale changes). ``all_reduce`` sums a tensor across processes;
    pass it to whiten over the global batch (the statistics then cover every process's masked entries). Padding
    positions are returned as 0.
    """
    mask = mask.to(x.dtype)
    stats = torch.stack([(x * mask).sum(), (x.square() * mask).sum(), mask.sum()])
    if all_reduce is not None:
        stats = all_reduce(stats)
    total, total_sq, count = stats.unbind()
    if count < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked entries, got {int(count)}.")
    mean = total / count
    var = (total_sq - count * mean.square()) / (count - 1)
    var = var.clamp(min=0)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def agg_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg_mode: str = "seq-mean-token-mean", max_len: int | None = None
) -> torch.Tensor:
    """Aggregate per-token losses ``(B, T)`` into a scalar (verl's ``agg_loss``).

    * ``token-mean``: mean over all masked tokens of the batch (TRL ``loss_type`` ``bnpo`` / ``dapo``);
    * ``seq-mean-token-mean``: mean over each sequence's tokens, then over sequences (ReFT's default, TRL ``grpo``);
    * ``seq-mean-token-sum``: sum over each sequence's tokens, then mean over sequences;
    * ``seq-mean-token-sum-norm``: the sum of all token losses divided by ``B * max_len`` (Dr. GRPO, TRL
      ``dr_grpo``; ``max_len`` defaults to ``T``, and should be the generation budget ``max_completion_length``).
    """
    mask = mask.to(loss_mat.dtype)
    token_sums = (loss_mat * mask).sum(-1)
    if loss_agg_mode == "token-mean":
        return token_sums.sum() / mask.sum().clamp(min=1)
    if loss_agg_mode == "seq-mean-token-mean":
        return (token_sums / mask.sum(-1).clamp(min=1)).mean()
    if loss_agg_mode == "seq-mean-token-sum":
        return token_sums.mean()
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return token_sums.sum() / (mask.size(0) * (max_len if max_len is not None else mask.size(-1)))
    raise ValueError(f"Unknown loss_agg_mode {loss_agg_mode!r}; expected one of {LOSS_AGG_MODES}.")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    *,
    cliprange_high: float | None = None,
    dual_clip: float | None = None,
    loss_agg_mode: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> torch.Tensor:
    """PPO's clipped surrogate ``max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))`` aggregated by
    :func:`agg_loss` (default: over each sequence's tokens, then over sequences).

    ``cliprange_high`` (clip-higher, DAPO; TRL ``epsilon_high``) defaults to ``cliprange``. ``dual_clip`` (verl's
    ``clip_ratio_c``, TRL's ``delta``; > 1) also bounds the loss of tokens with negative advantages by
    ``-A * dual_clip``, so a huge ratio on a bad token cannot blow up the update.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}.")
        losses = torch.where(advantages < 0, torch.minimum(losses, -advantages * dual_clip), losses)
    return agg_loss(losses, mask, loss_agg_mode, max_len)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    *,
    loss_agg_mode: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> torch.Tensor:
    """Clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old -+ c) - R)^2)``, aggregated like :func:`policy_loss`."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    per_token = torch.maximum((values - returns).square(), (clipped - returns).square())
    return 0.5 * agg_loss(per_token, mask, loss_agg_mode, max_len)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_l gamma**l * r_{t+l}`` over each completion's model tokens (0 where ``mask`` is 0): as in
    :func:`gae`, tokens with ``mask`` 0 between model tokens (tool results) are skipped, so ``gamma`` applies once
    per model token."""
    mask = mask.to(rewards.dtype)
    packed_mask, order = pack_left(mask, mask)
    returns = discounted_suffix_sum(rewards.gather(-1, order) * packed_mask, gamma) * packed_mask
    return unpack(returns, order)


def _group_stats(scores: torch.Tensor, group_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: its group's size, mean and unbiased std of ``scores`` (std 1 and mean 0 for groups of one)."""
    if group_ids is None:
        raise ValueError("group estimators need group_ids: which prompt each sample answers.")
    ids = torch.as_tensor(np.unique(np.asarray(group_ids), return_inverse=True)[1], device=scores.device)
    count = torch.zeros_like(scores).index_add_(0, ids, torch.ones_like(scores))
    total = torch.zeros_like(scores).index_add_(0, ids, scores)
    sq = torch.zeros_like(scores).index_add_(0, ids, scores.square())
    n, mean = count[ids], (total / count)[ids]
    var = ((sq - count * (total / count).square()) / (count - 1).clamp(min=1))[ids]
    std = torch.where(n > 1, var.clamp(min=0).sqrt(), torch.ones_like(var))
    return n, torch.where(n > 1, mean, torch.zeros_like(mean)), std


def outcome_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    estimator: str,
    *,
    group_ids=None,
    gamma: float = 1.0,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic-free advantages from token rewards ``(B, T)`` (verl's estimators); returns ``(advantages, returns)``.

    * ``reinforce_plus_plus``: discounted returns-to-go, whitened over the batch's tokens (returns: unwhitened).
    * ``reinforce_plus_plus_baseline``: the sequence reward minus its group's mean, whitened over the batch's tokens.
    * ``grpo``: the sequence reward minus its group's mean, divided by the group's std + ``eps`` when
      ``norm_by_std`` (TRL's ``scale_rewards``).
    * ``rloo``: the sequence reward minus the mean of the *other* samples of its group (times ``n / (n - 1)``).

    ``group_ids[i]`` names the prompt sample ``i`` answers; group estimators need at least 2 samples per prompt to
    say anything (as in verl, a group of one has mean 0 and std 1: its sample keeps its reward). Every token of a
    sequence gets that sequence's advantage.
    """
    mask = mask.to(rewards.dtype)
    if estimator == "reinforce_plus_plus":
        returns = discounted_returns(rewards, mask, gamma)
        return masked_whiten(returns, mask), returns
    scores = (rewards * mask).sum(-1)
    if estimator in GROUP_ESTIMATORS:
        n, mean, std = _group_stats(scores, group_ids)
        if estimator == "grpo":
            scores = (scores - mean) / (std + eps) if norm_by_std else scores - mean
        elif estimator == "rloo":
            scores = torch.where(n > 1, (scores * n - mean * n) / (n - 1).clamp(min=1), scores)
        else:
            scores = scores - mean
        advantages = scores.unsqueeze(-1) * mask
        if estimator == "reinforce_plus_plus_baseline":
            advantages = masked_whiten(advantages, mask)
        return advantages, advantages
    raise ValueError(f"Unknown advantage estimator {estimator!r}; expected one of {OUTCOME_ESTIMATORS}.")


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. (2019) (TRL <= 0.11 ``adap_kl_ctrl``, verl ``kl_ctrl.type=
    adaptive``): after each rollout, ``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), state["horizon"]


def ppo_statistics(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
) -> dict[str, torch.Tensor]:
    """Diagnostics for one mini-batch (token means over the mask): policy and value clip fractions, approximate KL
    between the old and new policy, and the value head's explained variance."""
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)
        pg_clipped = (-advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)) > (-advantages * ratio)
        vf_clipped = (values - old_values).abs() > cliprange_value
        approx_kl = 0.5 * (logprobs - old_logprobs).square()
        residual_var = masked_var(returns - values, mask)
        return_var = masked_var(returns, mask)
        return {
            "policy_clipfrac": masked_mean(pg_clipped.to(values.dtype), mask),
            "value_clipfrac": masked_mean(vf_clipped.to(values.dtype), mask),
            "approx_kl": masked_mean(approx_kl, mask),
            # Undefined (NaN, which TRL's logging skips) when the returns do not vary.
            "explained_variance": 1 - residual_var / return_var
            if return_var > 0
            else return_var.new_tensor(float("nan")),
        }


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (0 when fewer than two)."""
    mask = mask.to(x.dtype)
    count = mask.sum()
    if count < 2:
        return x.new_zeros(())
    mean = (x * mask).sum() / count
    return ((x - mean).square() * mask).sum() / (count - 1)
