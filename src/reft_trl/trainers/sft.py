"""The SFT warm-up: TRL's SFTTrainer plus greedy answer accuracy at every evaluation and per-epoch checkpoints.

ReFT starts PPO from an early SFT checkpoint (the *warm-up*: epoch 2 for GSM8K, SVAMP and MathQA P-CoT in the paper),
and its SFT baseline is the same run continued, best checkpoint kept. One run gives both: checkpoints are written at
every evaluation (each epoch by default), ``eval_accuracy`` is measured by greedy decoding of ``accuracy_dataset`` and
scored with :mod:`reft_trl.rewards`, and ``trainer.state.best_model_checkpoint`` points at the most accurate one.
The N-CoT / P-CoT targets come from :mod:`reft_trl.data` (prompt-completion rows; the loss covers the completion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig, SFTTrainer

from reft_trl.trainers.accuracy_eval import AccuracyEvalArguments, AccuracyEvalMixin


@dataclass
class WarmupSFTConfig(SFTConfig, AccuracyEvalArguments):
    """``SFTConfig`` whose evaluation measures answer accuracy, with a checkpoint kept at every epoch."""

    eval_strategy: str = field(
        default="epoch", metadata={"help": "When to measure answer accuracy (and save a checkpoint): 'epoch'/'steps'."}
    )
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint at every evaluation (keep them all)."})
    metric_for_best_model: str | None = field(
        default="accuracy", metadata={"help": "`trainer.state.best_model_checkpoint` is the most accurate one."}
    )
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher accuracy is better."})


class WarmupSFTTrainer(AccuracyEvalMixin, SFTTrainer):
    """``SFTTrainer`` + greedy answer accuracy on ``accuracy_dataset`` (prompt-only rows with ``answer``,
    ``answer_format``, ``cot``, ``completion_prefix``, as :func:`reft_trl.data.load_mwp` makes with ``kind="rl"``).

    ``eval_dataset`` (prompt-completion rows) is optional: when given, the held-out SFT loss is logged too.
    ``accuracy_tools``: the tools a tool-calling policy calls (the accuracy evaluation runs them; training rows are
    the conversations with their tool messages, e.g. :func:`reft_trl.data.tool_traces.tool_trace`).
    """

    def __init__(self, *args, accuracy_dataset=None, eval_dataset=None, accuracy_tools=None, **kwargs):
        self.accuracy_dataset = accuracy_dataset
        self.accuracy_tools = accuracy_tools
        super().__init__(*args, eval_dataset=self._eval_dataset_for(accuracy_dataset, eval_dataset), **kwargs)
