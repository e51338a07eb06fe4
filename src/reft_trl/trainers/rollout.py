"""RolloutTrainer: the rollout machinery that ReFT (PPO) and Online-ST share, on top of ``trl.GRPOTrainer``.

Both sample completions with TRL's generation, score them with reward callables, and learn from every rollout for
``num_iterations`` epochs of ``steps_per_generation`` micro-batches; they differ only in what they compute from a
rollout (:meth:`RolloutTrainer._process_rollout`) and in their loss (``_compute_loss``). This base owns, each
override saying why:

* ``__init__``: load the policy the way GRPOTrainer would, give subclasses a hook to change it *before* TRL wraps it
  with PEFT (:meth:`_prepare_policy`), and default to the answer reward built from the dataset's ``answer`` /
  ``answer_format`` / ``cot`` columns.
* reward models (``__init__``): a sequence classifier with several labels given as a path or model is refused
  (TRL would read ``logits[:, 0]``, whatever that label means) until wrapped as
  :class:`~reft_trl.models.reward_model.RewardModel` with its label; a ``RewardModel``'s classifier is placed on the
  device (or prepared by DeepSpeed) as TRL places reward models.
* ``_calculate_rewards``: keep the raw scores, which GRPO would only turn into group advantages, feed reward models
  the token layout TRL's ``RewardTrainer`` trained them on (``reward_model_tokenization``), and check each reward
  callable's output (one number or ``None`` per completion) and exceptions, naming the function and the step.
* checks before step 0 (called from ``__init__``; :mod:`reft_trl.trainers.preflight`): TRL 1.12 ``PPOTrainer``
  arguments (a ``TypeError`` pointing to the migration guide), no reward source (``GRPOTrainer``'s error, plus what
  the default reward needs), a dataset without ``prompt``, an empty or too small training set, rows the reward cannot
  score (by dataset index and field), tokenizers with ids the model has no embedding for, prompts too long for the
  model's context; and engine setups that cannot give plain, resumable folders (an FSDP launch accelerate did not set
  up, DeepSpeed ZeRO-3 without gathered 16-bit saves).
* ``_generate_and_score_completions``: TRL's rollout, then the subclass's :meth:`_process_rollout`.
* ``_prepare_inputs``: TRL's buffering at rollout boundaries, plus a fresh shuffle of the mini-batches at every later
  epoch over the same rollout (GRPO reuses the first shuffle).
* ``_save_checkpoint`` / ``_load_optimizer_and_scheduler``: refuse to save non-finite weights (each process checks
  its own shard under ZeRO-3/FSDP2, and all take the same decision), and save/restore the
  rollout in flight so that ``resume_from_checkpoint`` continues exactly where the run stopped. A checkpoint is
  complete or invisible (:mod:`reft_trl.trainers.checkpoints`): it is marked complete after its last file, old ones
  are rotated only then, and a full disk is reported as such, naming the file.
* ``train``: ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (logging the incomplete ones it
  skips); an incomplete or mismatched checkpoint named explicitly is refused before anything is loaded.
"""

from __future__ import annotations

import logging
import numbers
import shutil
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models import prepare_deepspeed
from trl.trainer.utils import (
    create_model_from_path,
    is_async_callable,
    shuffle_sequence_dict,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from reft_trl.models.reward_model import RewardModel, check_reward_model, classifier_scores, reward_model_texts
from reft_trl.trainers import ppo_config_names, preflight
from reft_trl.trainers.accuracy_eval import AccuracyEvalMixin
from reft_trl.trainers.checkpoints import (
    incomplete_reason,
    mark_complete,
    newest_complete,
    rotate_complete,
    write_or_explain,
)
from reft_trl.trainers.rollout_config import RolloutConfig

logger = logging.getLogger(__name__)

ROLLOUT_STATE_NAME = "reft_rollout_state-{rank}.pt"


class RolloutTrainer(AccuracyEvalMixin, GRPOTrainer):
    """GRPOTrainer with raw scores, one fresh shuffle per epoch over each rollout, and exact resume.

    Subclasses implement :meth:`_process_rollout` (what the rollout becomes: advantages, targets, ...) and
    ``_compute_loss``, and name their config class (``_config_class``, a :class:`RolloutConfig`); they may override
    :meth:`_prepare_policy` and :meth:`_policy_class`.

    Args:
        model: a model id or path (a full checkpoint, or a PEFT adapter folder: its base model is loaded with the
            adapter, trainable), or a ``PreTrainedModel``/``PeftModel``. The reference model, when ``beta > 0``, is
            reloaded by TRL from ``model.config._name_or_path`` (so an in-memory model must have been saved there),
            or is the adapter-disabled policy under PEFT.
        reward_funcs: TRL reward callables and reward models (or a list, weighted by ``args.reward_weights``).
            Defaults to :meth:`default_reward`, or, with an ``environment_factory``, to none: the environment's
            ``get_reward`` is then the reward. A sequence classifier with several labels must be wrapped as
            :class:`reft_trl.RewardModel` with its ``label``.
        args: the subclass's config (default: one named after the model).
        accuracy_dataset: prompt-only rows (``answer``, ``answer_format``, ``cot``, ``completion_prefix``) whose greedy
            answer accuracy is logged as ``eval_accuracy`` at every evaluation (``eval_strategy``).
        Other arguments are ``trl.GRPOTrainer``'s, multi-turn ones included: ``tools`` (e.g.
        :func:`reft_trl.sandbox.python_tool`), ``environment_factory`` and ``rollout_func`` (whose ``env_mask``
        becomes ``tool_mask``). Tokens a tool or environment wrote are context, not actions (:func:`action_mask`).
    """

    _config_class: type[RolloutConfig] = RolloutConfig

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs=None,
        args: RolloutConfig | None = None,
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
        ppo_config_names.refuse_trainer_arguments(type(self).__name__, kwargs)
        self.accuracy_dataset = accuracy_dataset
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
        if isinstance(model, str) and peft_config is not None and (Path(model) / "adapter_config.json").is_file():
            raise ValueError(
                f"model={model!r} is a PEFT adapter folder: the trainer continues training that adapter (on its base "
                "model), so it takes no peft_config (recipes: drop --use_peft). To train a new adapter, start from "
                "the merged model: PeftModel.from_pretrained(base, path).merge_and_unload().save_pretrained(...)."
            )
        if isinstance(model, str):
            model = self._load_policy(model, args, quantization_config)
        peft_config = self._prepare_policy(model, model_path, args, peft_config)

        if eval_dataset is not None and args.eval_strategy == "no":
            logger.warning(
                "eval_dataset is given but eval_strategy='no': it is not used. TRL evaluates it (a generate-and-score "
                "rollout, eval_* metrics) only at eval_strategy steps: set eval_strategy='steps' and eval_steps. (TRL "
                "1.12's PPOTrainer sampled from it whatever eval_strategy was; see %s#%s.)",
                ppo_config_names.GUIDE,
                "ppotrainer-arguments",
            )
        environments = kwargs.get("environment_factory") is not None
        if reward_funcs is None:
            if environments:
                # An environment that owns its reward (``get_reward``) scores alone: TRL adds it as a reward
                # function. (TRL refuses an environment without one when no reward_funcs are given.)
                reward_funcs = []
            else:
                preflight.check_default_reward_applies(train_dataset, type(self).__name__)
                reward_funcs = self.default_reward(args)
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        for func in funcs:
            check_reward_model(func, trust_remote_code=args.trust_remote_code)
        preflight.check_train_dataset(train_dataset, funcs, args, environments=environments)
        eval_dataset = self._eval_dataset_for(accuracy_dataset, eval_dataset)

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
        preflight.check_engine(
            fsdp_enabled=self.is_fsdp_enabled,
            deepspeed_plugin=self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None,
            distributed_type=self.accelerator.distributed_type,
            config_name=self._config_class.__name__,
        )
        self._prepare_reward_models()
        self._check_vocabularies()
        self._check_prompt_lengths()

    def _prepare_reward_models(self) -> None:
        """Put each :class:`~reft_trl.models.reward_model.RewardModel`'s classifier where TRL puts reward models:
        on this process's device, or prepared for inference by DeepSpeed; it renders conversations with the trainer's
        ``chat_template_kwargs`` and tokenizes as ``reward_model_tokenization`` says, unless given its own."""
        for func in self.reward_funcs:
            if isinstance(func, RewardModel):
                if func.chat_template_kwargs is None:
                    func.chat_template_kwargs = self.chat_template_kwargs
                if func.tokenization is None:
                    func.tokenization = self.args.reward_model_tokenization
                if self.is_deepspeed_enabled:
                    func.model = prepare_deepspeed(func.model, self.accelerator)
                else:
                    func.model = self.accelerator.prepare_model(
                        func.model, evaluation_mode=True, device_placement=True
                    )

    # ------------------------------------------------------------------------------------------------ model setup
    @staticmethod
    def default_reward(args: RolloutConfig):
        """The reward when none is given: :class:`reft_trl.rewards.AnswerReward` on the rows' ``answer`` (and
        ``answer_format``/``cot``) columns, with ``args.partial_reward`` and ``args.program_timeout``."""
        from reft_trl.rewards import AnswerReward

        return AnswerReward(partial_reward=args.partial_reward, timeout=args.program_timeout)

    def _load_policy(self, model_id: str, args: RolloutConfig, quantization_config) -> PreTrainedModel:
        """Load the policy exactly as GRPOTrainer.__init__ does for a string (same kwargs, same distributed rule,
        the class :meth:`_policy_class` says); a PEFT adapter folder (a LoRA run's output) is loaded on its base
        model, trainable, to continue training it."""
        init_kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            init_kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            init_kwargs["device_map"] = None
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        adapter = self._adapter_config(model_id) if (Path(model_id) / "adapter_config.json").is_file() else None
        path = adapter.base_model_name_or_path if adapter is not None else model_id
        architecture = self._policy_class(path, trust_remote_code=init_kwargs["trust_remote_code"])
        model = create_model_from_path(path, architecture=architecture, **init_kwargs)
        if adapter is None:
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, model_id, config=adapter, is_trainable=True)

    def _policy_class(self, path: str, *, trust_remote_code: bool) -> type | None:
        """The class to load the policy checkpoint ``path`` with; None: TRL's choice (its config's architecture)."""
        return None

    def _adapter_config(self, path: str):
        """The ``PeftConfig`` to load the adapter folder ``path`` with."""
        from peft import PeftConfig

        return PeftConfig.from_pretrained(path)

    def _prepare_policy(self, model: PreTrainedModel, model_path: str, args: RolloutConfig, peft_config):
        """Change the loaded policy before TRL wraps it; returns the PEFT config to use. The base changes nothing."""
        return peft_config

    # ------------------------------------------------------------------------------------ checks before step 0
    def _check_vocabularies(self) -> None:
        """:func:`~reft_trl.trainers.preflight.check_vocabulary` of the policy (and so the reference) and of each
        reward model, with the tokenizer that feeds it."""
        preflight.check_vocabulary(self.accelerator.unwrap_model(self.model), self.processing_class, "the policy")
        for func, tokenizer, name in zip(self.reward_funcs, self.reward_processing_classes, self.reward_func_names):
            if isinstance(func, RewardModel):
                preflight.check_vocabulary(func.model, func.processing_class, f"reward model {name!r}")
            elif isinstance(func, nn.Module) and tokenizer is not None:
                preflight.check_vocabulary(func, tokenizer, f"reward model {name!r}")

    def _check_prompt_lengths(self) -> None:
        """:func:`~reft_trl.trainers.preflight.check_prompt_lengths` against the model's context
        (``max_position_embeddings``, or ``vllm_max_model_length`` when smaller), the prompts tokenised as TRL
        tokenises them for generation (chat template included). Not checked: datasets without a length,
        vision-language models, environments, and models whose config has no ``max_position_embeddings``."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__") or self._is_vlm or self.environment_factories:
            return
        config = self.accelerator.unwrap_model(self.model).config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        context, source = getattr(config, "max_position_embeddings", None), "max_position_embeddings"
        vllm_limit = getattr(self.args, "vllm_max_model_length", None) if self.use_vllm else None
        if vllm_limit is not None and (context is None or vllm_limit < context):
            context, source = vllm_limit, "vllm_max_model_length"
        if context is None or "prompt" not in (getattr(dataset, "column_names", None) or []):
            return
        preflight.check_prompt_lengths(
            dataset,
            lambda prompts: [len(ids) for ids in self._tokenize_prompts(prompts)[0]],
            context=context,
            source=source,
            max_completion_length=self.max_completion_length,
        )

    # ---------------------------------------------------------------------------------------------------- rollout
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Keep the raw (gathered) reward of every function: PPO needs the scores, GRPO only keeps advantages.

        Reward models read what TRL's ``RewardTrainer`` trained them on (:meth:`_reward_model_scorer`). Each reward
        callable is checked while TRL calls it (:meth:`_checked_reward`): an exception, or an output
        that is not one number (or ``None``) per completion, stops the run with the function's name and the step."""
        funcs = self.reward_funcs
        terminated = [len(ids) > 0 and ids[-1] in self.eos_token_ids for ids in completion_ids_list]
        self.reward_funcs = [
            func
            if isinstance(func, nn.Module) and self.args.reward_model_tokenization == "grpo_trainer"
            else self._checked_reward(self._reward_model_scorer(func, i, terminated), name, prompts)
            for i, (func, name) in enumerate(zip(funcs, self.reward_func_names))
        ]
        try:
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = funcs
        self._rewards_per_func = rewards_per_func
        self._rollout_prompts = prompts
        return rewards_per_func

    def _reward_model_scorer(self, func, index: int, terminated: list[bool]):
        """``func`` as a reward callable that reads each completion as ``args.reward_model_tokenization`` says
        (:func:`~reft_trl.models.reward_model.reward_model_texts`): a :class:`RewardModel` is told which completions
        ended with EOS; a sequence classifier TRL loaded (one label, ``logits[:, 0]``) is scored by
        :func:`~reft_trl.models.reward_model.classifier_scores` with its ``reward_processing_classes`` tokenizer
        instead of TRL's decoded-text path. Other callables are returned as they are."""
        if isinstance(func, RewardModel):
            return lambda prompts, completions, **kwargs: func(prompts, completions, terminated=terminated)
        if not isinstance(func, nn.Module):
            return func
        tokenizer = self.reward_processing_classes[index]

        def score(prompts, completions, **kwargs):
            texts, add_special_tokens = reward_model_texts(
                tokenizer,
                prompts,
                completions,
                terminated,
                tokenization=self.args.reward_model_tokenization,
                chat_template_kwargs=self.chat_template_kwargs,
            )
            return classifier_scores(func, tokenizer, texts, add_special_tokens=add_special_tokens)

        return score

    def _checked_reward(self, func, name: str, prompts: list):
        """``func`` as TRL calls it (keywords only, same sync/async kind), with its failures made explicit: an
        exception is re-raised as :class:`RewardFunctionError` naming the function and the step (the original is
        its ``__cause__``); an output other than one number or ``None`` per completion (a string, a nested list, a
        wrong length) raises a ``ValueError`` naming the function, the step, the value and the row's prompt.
        Numbers (bools, numpy and 0-d tensor scalars included) are passed on as floats."""

        def failed(err: Exception):
            mode = "training" if self.model.training else "evaluation"
            return RewardFunctionError(
                f"Reward function {name!r} raised {type(err).__name__} at step {self.state.global_step} ({mode}, "
                f"{len(prompts)} completions): {err}"
            )

        if is_async_callable(func):

            async def checked(**kwargs):
                try:
                    output = await func(**kwargs)
                except Exception as err:
                    raise failed(err) from err
                return self._checked_scores(output, name, prompts)

        else:

            def checked(**kwargs):
                try:
                    output = func(**kwargs)
                except Exception as err:
                    raise failed(err) from err
                return self._checked_scores(output, name, prompts)

        return checked

    def _checked_scores(self, output, name: str, prompts: list) -> list[float | None]:
        step = self.state.global_step
        n = len(prompts)
        if isinstance(output, torch.Tensor):
            output = output.tolist()
        if isinstance(output, (str, bytes, dict)) or not isinstance(output, Iterable):
            raise ValueError(
                f"Reward function {name!r} returned {_short(output)} ({type(output).__name__}) at step {step}; "
                f"expected a list of {n} numbers, one per completion (None for no score)."
            )
        values = list(output)
        if len(values) != n:
            raise ValueError(
                f"Reward function {name!r} returned {len(values)} scores at step {step} for {n} completions; "
                "expected one number (or None) per completion."
            )
        scores: list[float | None] = []
        for i, value in enumerate(values):
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if value is None or isinstance(value, (numbers.Real, Decimal)):
                scores.append(None if value is None else float(value))
                continue
            raise ValueError(
                f"Reward function {name!r} returned {_short(value)} ({type(value).__name__}) for completion {i} "
                f"at step {step}, prompt {str(prompts[i])[:200]!r}; every score must be a number or None."
            )
        return scores

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
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP with a sharded state-dict type (TRL's and reft-trl's ``fsdp2.yaml``) transformers writes no
        model files at all (a checkpoint gets only FSDP's sharded files, for resuming): here the full state dict is
        gathered (accelerate's ``get_state_dict``: FSDP2's ``full_state_dict``, on the main process's CPU) and saved
        like any other, so that every model folder is a plain one under every engine."""
        plugin = self.accelerator.state.fsdp_plugin if self.is_fsdp_enabled else None
        if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            return super().save_model(output_dir, _internal_call=_internal_call)
        self._save(output_dir, state_dict=self.accelerator.get_state_dict(self.model))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_checkpoint(self, model, trial):
        """Refuse to write non-finite weights; save the rollout in flight so a resumed run continues exactly."""
        bad = self._nonfinite_parameters()
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

    def _nonfinite_parameters(self) -> list[str]:
        """The names of the parameters holding a non-finite element, the same list on every process.

        Each process checks the elements it holds (:func:`_local_elements`: under ZeRO-3 its partition, as the module
        only has 0-element placeholders between forwards; under FSDP2 its DTensor shard), and the names are gathered
        from all processes, so that all of them take the same decision (one refusing alone would leave the others
        waiting in the checkpoint's collectives)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        bad = [n for n, p in unwrapped.named_parameters() if not torch.isfinite(_local_elements(p)).all()]
        if self.accelerator.num_processes > 1:
            bad = list(dict.fromkeys(gather_object(bad)))  # in the order of the processes
        return bad

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
        device = self.accelerator.device  # torch.load cannot map to an indexed CPU ("cpu:0", multi-process CPU runs)
        state = torch.load(path, map_location="cpu" if device.type == "cpu" else device, weights_only=False)
        self._step = state["step"]
        self._rollout = state["rollout"]
        self._buffered_inputs = state["buffered"]
        self._load_rollout_state(state)

    def _rollout_state(self) -> dict[str, Any]:
        """More state a subclass needs to resume exactly (e.g. an adaptive KL coefficient); saved with the rollout."""
        return {}

    def _load_rollout_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_rollout_state` saved."""


def action_mask(batch: dict[str, Any]) -> torch.Tensor:
    """1 on the completion tokens the policy wrote (its actions), 0 on padding and on the tokens a tool or an
    environment wrote into a multi-turn completion (TRL's ``tool_mask``: 0 on tool results, also what a
    ``rollout_func``'s ``env_mask`` becomes). Rewards, the KL penalty, advantages, returns and both loss terms live
    on these tokens only; GAE runs over them in order, skipping the others (:func:`reft_trl.core.gae`)."""
    mask = batch["completion_mask"]
    if batch.get("tool_mask") is not None:
        mask = mask * batch["tool_mask"]
    return mask


class RewardFunctionError(RuntimeError):
    """A reward callable raised: the message names the function and the step; ``__cause__`` is the original."""


def _short(value: Any) -> str:
    """``repr(value)``, cut to 120 characters."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _local_elements(param: torch.Tensor) -> torch.Tensor:
    """The elements of ``param`` this process holds: its ZeRO-3 partition (``ds_tensor``), its FSDP2 shard (a
    DTensor's local tensor), or the whole tensor."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.detach()
    if hasattr(param, "to_local"):
        return param.to_local().detach()
    return param.detach()


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


__all__ = ["ROLLOUT_STATE_NAME", "RewardFunctionError", "RolloutTrainer", "action_mask"]
