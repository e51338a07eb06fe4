"""The RL math of ReFT as pure tensor functions: no trainer state, no distributed code.

Conventions (shared by every function here): tensors are completion-only, shape ``(B, T)``, right-padded;
``mask`` is 1 on completion tokens (the EOS token included) and 0 on padding. ``logprobs`` are the log-probabilities
of the sampled tokens. Read top to bottom, this module is one PPO update:

    rewards              = token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns  = gae(rewards, old_values, mask, gamma, lam)
    advantages           = masked_whiten(advantages, mask)            # over the global batch
    loss                 = policy_loss(...) + vf_coef * value_loss(...)

Numerics follow the ReFT authors' reference implementation (see ``tests/test_core.py``, which reproduces their
values to 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy.

    ``k1`` is ``logp - logp_ref`` (unbiased, can be negative; what the ReFT reference uses), ``k2`` is
    ``0.5 * (logp - logp_ref)**2`` and ``k3`` is ``exp(logp_ref - logp) - (logp_ref - logp) - 1`` (unbiased and
    always >= 0; Schulman's estimator). All three are 0 where the two policies agree.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
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


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` set to 0 after the completion (the episode ends at the last
    completion token), ``A_t = sum_l (gamma * lam)**l * delta_{t+l}`` and ``R_t = A_t + V_t``. Both outputs are 0
    on padding; whatever ``values`` holds at padded positions is ignored.
    """
    mask = mask.to(values.dtype)
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


def _seq_then_batch_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's completion tokens, then over sequences (the reference's normalisation)."""
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> torch.Tensor:
    """PPO's clipped surrogate: ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))``, averaged over each
    sequence's tokens, then over sequences."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return _seq_then_batch_mean(torch.maximum(unclipped, clipped), mask)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> torch.Tensor:
    """Clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old -+ c) - R)^2)``, same normalisation as
    :func:`policy_loss`."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    per_token = 0.5 * torch.maximum((values - returns).square(), (clipped - returns).square())
    return _seq_then_batch_mean(per_token, mask)


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
