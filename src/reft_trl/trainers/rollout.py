"""RolloutTrainer: the rollout machinery that ReFT (PPO) and Online-ST share, on top of ``trl.GRPOTrainer``.

Both sample completions with TRL's generation, score them with reward callables, and learn from every rollout for
``num_iterations`` epochs of ``steps_per_generation`` micro-batches; they differ only in what they compute from a
rollout (:meth:`RolloutTrainer._process_rollout`) and in their loss (``_compute_loss``). This base owns, each
override saying why:

* ``__init__``: load the policy the way GRPOTrainer would, give subclasses a hook to change it *before* TRL wraps it
  with PEFT (:meth:`_prepare_policy`), and default to the answer reward built from the dataset's ``answer`` /
  ``answer_format`` / ``cot`` columns.
* ``_calculate_rewards``: keep the raw scores, which GRPO would only turn into group advantages.
* ``_generate_and_score_completions``: TRL's rollout, then the subclass's :meth:`_process_rollout`.
* ``_prepare_inputs``: TRL's buffering at rollout boundaries, plus a fresh shuffle of the mini-batches at every later
  epoch over the same rollout (GRPO reuses the first shuffle).
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: refuse to save non-finite weights, and save/restore the
  rollout in flight so that ``resume_from_checkpoint`` continues exactly where the run stopped. A checkpoint is
  complete or invisible (:mod:`reft_trl.trainers.checkpoints`): it is marked complete after its last file, old ones
  are rotated only then, and a full disk is reported as such, naming the file.
* ``train``: ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (logging the incomplete ones it
  skips); an incomplete or mismatched checkpoint named explicitly is refused before anything is loaded.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import (
    create_model_from_path,
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from reft_trl.models.value_head import causal_lm_class_expecting_value_head
from reft_trl.trainers.accuracy_eval import AccuracyEvalMixin
from reft_trl.trainers.checkpoints import (
    incomplete_reason,
    mark_complete,
    newest_complete,
    rotate_complete,
    write_or_explain,
)
from reft_trl.trainers.reft_config import ReFTConfig

logger = logging.getLogger(__name__)

ROLLOUT_STATE_NAME = "reft_rollout_state-{rank}.pt"


class RolloutTrainer(AccuracyEvalMixin, GRPOTrainer):
    """GRPOTrainer with raw scores, one fresh shuffle per epoch over each rollout, and exact resume.

    Subclasses implement :meth:`_process_rollout` (what the rollout becomes: advantages, targets, ...) and
    ``_compute_loss``; they may override :meth:`_prepare_policy`. Arguments are :class:`ReFTTrainer`'s.
    """

    _config_class = ReFTConfig

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs=None,
        args: ReFTConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        accuracy_dataset=None,
        **kwargs,
    ):
        self.accuracy_dataset = accuracy_dataset
        eval_dataset = self._eval_dataset_for(accuracy_dataset, eval_dataset)
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = self._config_class(f"{Path(name).name}-{self._name}")
        if not isinstance(args, self._config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self._config_class.__name__} "
                f"(args={self._config_class.__name__}(...)), got {type(args).__name__}."
            )

        # Subclasses may change the model before TRL wraps it with PEFT, so it is loaded here, as GRPOTrainer would.
        model_path = model if isinstance(model, str) else model.config._name_or_path
        if isinstance(model, str):
            model = self._load_policy(model, args, quantization_config)
        peft_config = self._prepare_policy(model, model_path, args, peft_config)

        if reward_funcs is None:
            from reft_trl.rewards import AnswerReward

            reward_funcs = AnswerReward(partial_reward=args.partial_reward, timeout=args.program_timeout)

        self._rewards_per_func: torch.Tensor | None = None
        self._rollout_prompts: list | None = None
        self._rollout: dict[str, Any] | None = None

        with _quiet_model_init_kwargs_warning():
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                reward_processing_classes=reward_processing_classes,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
                **kwargs,
            )

    # ------------------------------------------------------------------------------------------------ model setup
    @staticmethod
    def _load_policy(model_id: str, args: ReFTConfig, quantization_config) -> PreTrainedModel:
        """Load the policy exactly as GRPOTrainer.__init__ does for a string (same kwargs, same distributed rule).
        A ReFT checkpoint's value head is expected there, not reported as unexpected: ReFTTrainer loads it itself."""
        init_kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            init_kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            init_kwargs["device_map"] = None
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        architecture = causal_lm_class_expecting_value_head(
            model_id, trust_remote_code=init_kwargs["trust_remote_code"]
        )
        return create_model_from_path(model_id, architecture=architecture, **init_kwargs)

    def _prepare_policy(self, model: PreTrainedModel, model_path: str, args: ReFTConfig, peft_config):
        """Change the loaded policy before TRL wraps it; returns the PEFT config to use. The base changes nothing."""
        return peft_config

    # ---------------------------------------------------------------------------------------------------- rollout
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Keep the raw (gathered) reward of every function: PPO needs the scores, GRPO only keeps advantages."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func
        self._rollout_prompts = prompts
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout (generation, rewards, reference log-probs), then :meth:`_process_rollout`. A training
        rollout is kept in its original order: later epochs over it shuffle it afresh (see ``_prepare_inputs``)."""
        mode = "train" if self.model.training else "eval"
        batch = self._process_rollout(super()._generate_and_score_completions(inputs), inputs, mode)
        if mode == "train":
            self._rollout = batch
        return batch

    def _process_rollout(self, batch: dict[str, Any], inputs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        """What this trainer learns from a rollout: add the tensors its ``_compute_loss`` reads to ``batch``."""
        raise NotImplementedError

    def _local_scores(self, batch_size: int) -> torch.Tensor:
        """This process's weighted sum of the reward functions' scores; a completion no function scored is an error."""
        rewards_per_func = self._rewards_per_func
        start = self.accelerator.process_index * batch_size
        local = rewards_per_func[start : start + batch_size]
        unscorable = torch.isnan(local).all(dim=1)
        if unscorable.any() or torch.isinf(local).any():
            row = int((unscorable | torch.isinf(local).any(dim=1)).nonzero()[0])
            prompt = self._rollout_prompts[row] if self._rollout_prompts is not None else "?"
            raise FloatingPointError(
                f"Non-finite reward at step {self.state.global_step}: reward functions {self.reward_func_names} "
                f"returned {local[row].tolist()} for the completion of prompt {str(prompt)[:200]!r}. Every completion "
                "needs a finite score from at least one reward function."
            )
        return (local * self.reward_weights.to(local.device).unsqueeze(0)).nansum(dim=1)

    def _global_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.accelerator.num_processes > 1 else tensor

    # -------------------------------------------------------------------------------------------- mini-batching
    def _prepare_inputs(self, generation_batch):
        """GRPOTrainer's buffering; at the start of every later PPO epoch over the same rollout, the buffered
        mini-batches are replaced by a fresh shuffle of the rollout (GRPO walks the first shuffle again)."""
        micro_batches = self.args.steps_per_generation
        new_epoch = self._step % micro_batches == 0 and self._step % (micro_batches * self.num_iterations) != 0
        if self.model.training and new_epoch and self._buffered_inputs is not None:
            batch = shuffle_sequence_dict(split_pixel_values_by_grid(self._rollout))
            self._buffered_inputs = [unsplit_pixel_values_by_grid(b) for b in split_tensor_dict(batch, micro_batches)]
        return super()._prepare_inputs(generation_batch)

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        """Refuse to write non-finite weights; save the rollout in flight so a resumed run continues exactly."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        bad = [n for n, p in unwrapped.named_parameters() if p.numel() and not torch.isfinite(p.detach()).all()]
        if bad:
            raise FloatingPointError(
                f"Non-finite weights at step {self.state.global_step} ({len(bad)} tensors, e.g. {bad[:3]}): "
                "refusing to write a corrupted checkpoint."
            )
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.exists() and incomplete_reason(folder) is not None:
            shutil.rmtree(folder)  # what an interrupted save of this step left: never mixed with the new files
        self.accelerator.wait_for_everyone()
        # transformers rotates old checkpoints right after its own files: hold that back until this one is complete
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        save = super()._save_checkpoint
        try:
            write_or_explain(folder, lambda: save(model, trial))
        finally:
            self.args.save_total_limit = limit
        state = {"step": self._step, "rollout": _to_cpu(self._rollout), "buffered": _to_cpu(self._buffered_inputs)}
        state.update(self._rollout_state())
        path = folder / ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index)
        write_or_explain(path, lambda: torch.save(state, path))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder)
            rotate_complete(run_dir, limit, [self.state.best_model_checkpoint])
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``resume_from_checkpoint=True`` resumes from the newest complete checkpoint of ``output_dir``; a path must
        be a complete checkpoint that matches this trainer (see :meth:`_check_resumable`)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = str(newest_complete(self.args.output_dir))
        elif resume_from_checkpoint:
            reason = incomplete_reason(resume_from_checkpoint)
            if reason is not None:
                raise ValueError(f"Cannot resume from {resume_from_checkpoint}: not a complete checkpoint, {reason}.")
        if resume_from_checkpoint:
            self._check_resumable(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_resumable(self, checkpoint: str) -> None:
        """Raise a clear error when ``checkpoint`` cannot continue this run (a subclass knows what it needs)."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Also restore the micro-step counter and the rollout in flight (see ``_save_checkpoint``)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / ROLLOUT_STATE_NAME.format(rank=self.accelerator.process_index)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: this checkpoint holds no rollout state for process "
                f"{self.accelerator.process_index} (was it written with another number of processes?)."
            )
        state = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self._step = state["step"]
        self._rollout = state["rollout"]
        self._buffered_inputs = state["buffered"]
        self._load_rollout_state(state)

    def _rollout_state(self) -> dict[str, Any]:
        """More state a subclass needs to resume exactly (e.g. an adaptive KL coefficient); saved with the rollout."""
        return {}

    def _load_rollout_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_rollout_state` saved."""


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class _quiet_model_init_kwargs_warning:
    """GRPOTrainer warns that ``model_init_kwargs`` is ignored for an instantiated model; the trainer loaded the model
    from those very kwargs (and TRL still uses them for the reference model), so the warning would mislead."""

    class _Filter(logging.Filter):
        def filter(self, record):
            return "model_init_kwargs" not in record.getMessage()

    def __enter__(self):
        self._logger = logging.getLogger("trl.trainer.grpo_trainer")
        self._filter = self._Filter()
        self._logger.addFilter(self._filter)

    def __exit__(self, *exc):
        self._logger.removeFilter(self._filter)
        return False


__all__ = ["ROLLOUT_STATE_NAME", "RolloutTrainer"]
