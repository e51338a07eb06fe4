"""The metrics ReFTTrainer logs for each rollout and each PPO update, under the names TRL <= 1.12's PPOTrainer used
(``objective/kl``, ``val/ratio``, ``policy/clipfrac``, ...), so that dashboards built on them keep working.

Each function returns ``{name: value}`` computed over every process: ``gather`` concatenates a tensor's values from
all processes, ``global_sum`` adds them (both the identity on one process). The trainer appends them to its metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reft_trl import core

Reduce = Callable[[torch.Tensor], torch.Tensor]


def rollout_metrics(
    scores: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    values: torch.Tensor | None,
    returns: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    kl_estimator: str,
    gather: Reduce,
    global_sum: Reduce,
) -> dict[str, float]:
    """``objective/scores``; with a reference, ``objective/kl`` (the mean sequence k1 KL), ``objective/non_score_reward``
    (the KL penalty the reward paid, with the configured estimator, as 1.12 logged it) and ``objective/rlhf_reward``;
    with a critic, ``value/mean`` and ``value/returns_mean`` over completion tokens."""
    metrics = {"objective/scores": gather(scores).mean().item()}
    if ref_logps is not None:
        seq_kl = (core.kl_penalty(old_logps, ref_logps, "k1") * mask).sum(-1)
        penalty = (
            seq_kl if kl_estimator == "k1" else (core.kl_penalty(old_logps, ref_logps, kl_estimator) * mask).sum(-1)
        )
        non_score = -kl_coef * gather(penalty).mean().item()
        metrics["objective/kl"] = gather(seq_kl).mean().item()
        metrics["objective/non_score_reward"] = non_score
        metrics["objective/rlhf_reward"] = metrics["objective/scores"] + non_score
    if values is not None:
        totals = global_sum(torch.stack([(values * mask).sum(), (returns * mask).sum(), mask.sum()]))
        metrics["value/mean"] = (totals[0] / totals[2]).item()
        metrics["value/returns_mean"] = (totals[1] / totals[2]).item()
    return metrics


def update_metrics(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    entropies: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor | None,
    old_values: torch.Tensor | None,
    returns: torch.Tensor | None,
    mask: torch.Tensor,
    pg_loss: torch.Tensor,
    vf_loss: torch.Tensor | None,
    *,
    cliprange: float,
    cliprange_value: float,
    gather: Reduce,
) -> dict[str, float]:
    """One micro-batch of the update, averaged over processes: ``loss/policy``, ``entropy``, ``policy/clipfrac``,
    ``policy/approxkl``, ``val/ratio`` and ``val/ratio_var`` (new/old policy ratio over completion tokens); with a
    critic, ``loss/value``, ``value/clipfrac`` and ``value/explained_variance``."""
    zeros = torch.zeros_like(old_logps)
    with torch.no_grad():
        logps = logps.detach()
        ratio = torch.exp(logps - old_logps)
        stats = core.ppo_statistics(
            logps,
            old_logps,
            advantages,
            values.detach() if values is not None else zeros,
            old_values if old_values is not None else zeros,
            returns if returns is not None else zeros,
            mask,
            cliprange,
            cliprange_value,
        )
        stats.update(
            entropy=core.masked_mean(entropies.detach(), mask),
            pg=pg_loss.detach(),
            ratio=core.masked_mean(ratio, mask),
            ratio_var=core.masked_var(ratio, mask),
        )
        if vf_loss is not None:
            stats["vf"] = vf_loss.detach()
    means = dict(zip(stats, gather(torch.stack(list(stats.values())).reshape(1, -1)).mean(0).tolist(), strict=True))
    metrics = {
        "loss/policy": means["pg"],
        "entropy": means["entropy"],
        "policy/clipfrac": means["policy_clipfrac"],
        "policy/approxkl": means["approx_kl"],
        "val/ratio": means["ratio"],
        "val/ratio_var": means["ratio_var"],
    }
    if vf_loss is not None:
        metrics.update({
            "loss/value": means["vf"],
            "value/clipfrac": means["value_clipfrac"],
            "value/explained_variance": means["explained_variance"],
        })  # fmt: skip
    return metrics


__all__ = ["rollout_metrics", "update_metrics"]
