"""Online self-training (the paper's Online-ST baseline) on ReFT's rollout loop.

Each rollout samples one completion per question exactly as ReFT does (same generation, reward, mini-batching,
checkpointing: both are siblings on :class:`~reft_trl.trainers.rollout.RolloutTrainer`, and this one only defines
what is learned from the rollout). The loss
is supervised: the negative log-likelihood of the sampled completions whose reward is 1 (correct), averaged
half-and-half with the negative log-likelihood of the gold CoT of the same questions. No KL penalty, no reference
model, no value head.

The training rows need the gold CoT: use the SFT rows of :mod:`reft_trl.data` (``kind="sft"``: ``prompt``,
``completion`` = the gold CoT, ``answer``, ``answer_format``, ``cot``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from reft_trl.rewards.cot import completion_text
from reft_trl.trainers.rollout import RolloutTrainer, action_mask
from reft_trl.trainers.rollout_config import RolloutConfig


@dataclass
class OnlineSTConfig(RolloutConfig):
    """The rollout config for Online-ST: no KL (no reference model), one pass over each rollout by default."""

    _pair_defaults: ClassVar[dict] = {**RolloutConfig._pair_defaults, "beta": 0.0, "num_iterations": 1}

    gold_weight: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the gold-CoT NLL; the correct samples' NLL gets 1 - gold_weight (half-and-half)."
        },
    )
    gold_column: str = field(default="completion", metadata={"help": "Dataset column with the gold CoT."})

    def _check_settings(self) -> None:
        if self.beta != 0:
            raise ValueError(f"Online-ST has no KL penalty: kl_coef/beta must be 0, got {self.beta}.")
        if not 0 <= self.gold_weight <= 1:
            raise ValueError(f"gold_weight must be in [0, 1], got {self.gold_weight}.")


class OnlineSTTrainer(RolloutTrainer):
    """Online-ST: SFT on the correct samples of each ReFT rollout, mixed half-and-half with SFT on the gold CoT.

    Arguments are :class:`~reft_trl.trainers.rollout.RolloutTrainer`'s, with an :class:`OnlineSTConfig`."""

    _tag_names = ["trl", "reft", "online-st"]
    _name = "Online-ST"
    _config_class = OnlineSTConfig

    def _process_rollout(self, batch: dict[str, Any], inputs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        """Keep the scores and add the tokenised gold CoT of each question (no values, no advantages)."""
        column = self.args.gold_column
        if column not in inputs[0]:
            raise KeyError(
                f"Online-ST needs the gold CoT in a {column!r} column (use reft_trl.data SFT rows, kind='sft'); "
                f"the rows have {sorted(inputs[0])}."
            )
        device = batch["completion_ids"].device
        scores = self._local_scores(batch["completion_ids"].size(0)).to(device)
        gold = [completion_text(row[column]) for row in inputs]
        eos = self.processing_class.eos_token if hasattr(self.processing_class, "eos_token") else ""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        encoded = tokenizer([g + eos for g in gold], add_special_tokens=False)["input_ids"]
        width = max(len(ids) for ids in encoded)
        pad = tokenizer.pad_token_id
        gold_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in encoded], device=device)
        gold_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in encoded], device=device)
        batch.update(scores=scores, gold_ids=gold_ids, gold_mask=gold_mask)
        batch.pop("ref_per_token_logps", None)
        gathered = self.accelerator.gather(scores)
        self._metrics[mode]["objective/scores"].append(gathered.mean().item())
        self._metrics[mode].pop("frac_reward_zero_std", None)
        return batch

    def _nll(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask=None) -> torch.Tensor:
        """Per-sequence mean NLL of ``completion_ids`` after ``prompt_ids``, over ``loss_mask`` (default: every
        completion token; for a multi-turn sample, its :func:`~reft_trl.trainers.rollout.action_mask`: the tool
        results stay in the context but are not learned, as the model did not write them)."""
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, completion_ids.size(1))
        mask = (completion_mask if loss_mask is None else loss_mask).to(logps.dtype)
        return -(logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def _compute_loss(self, model, inputs):
        """``gold_weight * NLL(gold CoT) + (1 - gold_weight) * NLL(correct samples)`` (each a mean over sequences;
        a micro-batch without a correct sample is learned from the gold CoT alone)."""
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        gold_nll = self._nll(model, prompt_ids, prompt_mask, inputs["gold_ids"], inputs["gold_mask"]).mean()
        correct = inputs["scores"] >= 1.0
        loss = gold_nll
        sample_nll = torch.zeros((), device=gold_nll.device)
        if correct.any():
            sample_nll = self._nll(
                model,
                prompt_ids[correct],
                prompt_mask[correct],
                inputs["completion_ids"][correct],
                inputs["completion_mask"][correct],
                action_mask(inputs)[correct],
            ).mean()
            w = self.args.gold_weight
            loss = w * gold_nll + (1 - w) * sample_nll
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"Non-finite Online-ST loss at step {self.state.global_step}.")
        stats = torch.stack([gold_nll.detach(), sample_nll.detach(), correct.float().mean()])
        gold_mean, sample_mean, frac = self.accelerator.gather(stats.reshape(1, -1)).mean(0).tolist()
        self._metrics[mode]["loss/gold_nll"].append(gold_mean)
        self._metrics[mode]["loss/sample_nll"].append(sample_mean)
        self._metrics[mode]["frac_correct_samples"].append(frac)
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        return loss
