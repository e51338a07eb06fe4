"""Greedy answer accuracy as part of ``Trainer.evaluate()``, shared by the SFT warm-up and ReFT trainers.

With ``eval_strategy`` set, every evaluation decodes ``accuracy_dataset`` greedily and logs ``eval_accuracy`` and
``eval_unparsable``; ``metric_for_best_model="accuracy"`` then tracks the best checkpoint, and the accuracy curve
lands in ``trainer.state.log_history`` (and every ``report_to`` backend) like any other metric.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from transformers import Trainer
from trl.models.utils import unwrap_model_for_generation

from reft_trl.evaluation.accuracy import answer_accuracy

DEFAULT_ACCURACY_MAX_NEW_TOKENS = 256
"""The accuracy evaluation's generation budget when neither it nor ``max_completion_length`` is set."""


@dataclass
class AccuracyEvalArguments:
    """The settings of the greedy accuracy evaluation: a field mixin of the configs of the trainers that run it
    (``WarmupSFTConfig``, ``RolloutConfig``)."""

    accuracy_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Generation budget of the greedy accuracy evaluation (default: max_completion_length for the RL "
            f"trainers, {DEFAULT_ACCURACY_MAX_NEW_TOKENS} for the SFT warm-up)."
        },
    )
    accuracy_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the accuracy evaluation (default: per_device_eval_batch_size)."}
    )


class AccuracyEvalMixin:
    """Mixin for a transformers ``Trainer`` subclass whose ``args`` are :class:`AccuracyEvalArguments`.

    A trainer with tools (``accuracy_tools``, else the RL trainers' ``tools=``) evaluates greedy multi-turn
    conversations in which the model's tool calls run (:func:`reft_trl.evaluation.answer_accuracy` with ``tools``)."""

    accuracy_dataset = None
    accuracy_tools = None

    @staticmethod
    def _eval_dataset_for(accuracy_dataset, eval_dataset):
        # Trainer refuses eval_strategy != "no" without an eval_dataset. When the answer accuracy is the whole
        # evaluation, an empty dict satisfies it and evaluate() below skips the loss evaluation.
        if accuracy_dataset is not None and eval_dataset is None:
            return {}
        return eval_dataset

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = {}
        loss_evaluated = eval_dataset is not None or bool(self.eval_dataset)
        if loss_evaluated:
            metrics.update(super().evaluate(eval_dataset, ignore_keys, metric_key_prefix))
        if self.accuracy_dataset is not None:
            start = time.perf_counter()
            accuracy = self.answer_accuracy()
            accuracy_metrics = {f"{metric_key_prefix}_{k}": v for k, v in accuracy.items() if k != "n"}
            accuracy_metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
            # Trainer.log, not the TRL subclass's: that one would flush the pending *training* metrics into this line.
            Trainer.log(self, accuracy_metrics)
            metrics.update(accuracy_metrics)
            if not loss_evaluated:
                # Trainer.evaluate would have told the callbacks (and reset control.should_evaluate).
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def answer_accuracy(self, dataset=None) -> dict[str, float]:
        """Greedy accuracy of the current model on ``dataset`` (default: ``accuracy_dataset``)."""
        args = self.args
        gc_kwargs = args.gradient_checkpointing_kwargs if args.gradient_checkpointing else None
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gradient_checkpointing_kwargs=gc_kwargs
        ) as model:
            return answer_accuracy(
                model,
                self.processing_class,
                self.accuracy_dataset if dataset is None else dataset,
                max_new_tokens=args.accuracy_max_new_tokens
                or getattr(args, "max_completion_length", None)
                or DEFAULT_ACCURACY_MAX_NEW_TOKENS,
                batch_size=args.accuracy_batch_size or args.per_device_eval_batch_size,
                accelerator=self.accelerator,
                progress=not args.disable_tqdm,
                tools=self.accuracy_tools or getattr(self, "tools", None) or None,
            )
