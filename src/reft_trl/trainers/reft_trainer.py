"""ReFTTrainer: PPO with a shared-trunk value head on top of ``trl.GRPOTrainer``.

TRL deleted its PPOTrainer in 1.13. GRPOTrainer already does everything around the PPO update: generation
(transformers or vLLM), reward callables fed with dataset columns, PEFT, DeepSpeed/FSDP, gradient accumulation,
reusing one rollout for several optimisation epochs (``num_iterations``), logging and checkpoints. The rollout
machinery ReFT shares with Online-ST (raw scores, a fresh shuffle per PPO epoch, exact resume, the default answer
reward) lives in :class:`reft_trl.trainers.rollout.RolloutTrainer`; this subclass adds only what PPO needs, each
override saying why:

* ``_prepare_policy``: attach the value head (or a separate critic, from ``value_model_path``: e.g. a reward model,
  its score layer as the head) and restore the one saved with the starting folder; ``__init__`` marks the head
  trainable under PEFT (it is not an adapter module) and keeps it out of the vLLM weight sync.
* ``_policy_class`` / ``_adapter_config``: load a folder an earlier reft-trl wrote (value head inside the policy's
  files, or in an adapter's ``modules_to_save``) without reporting or wrapping the head.
* ``_get_per_token_logps_and_entropies``: inside a ``with self._capture_forward() as capture:`` block, record the
  log-probs, entropies and values of the first forward in ``capture`` (a :class:`ForwardCapture`): the values come
  from the same forward that gives the log-probs (one trunk pass for both). In the rollout that forward must be the
  policy's no-grad forward whose log-probs TRL returns as ``old_per_token_logps``; ``_process_rollout`` checks it
  and fails loudly otherwise.
* ``_generate_and_score_completions`` / ``_process_rollout``: after TRL's rollout, turn scores into KL-shaped token
  rewards, run GAE and whiten the advantages over the global batch (:mod:`reft_trl.core`).
* ``_compute_loss``: clipped policy loss + ``vf_coef`` * clipped value loss. The KL lives in the reward, so there is
  no KL term in the loss (``beta`` only builds the reference model).
* ``_save`` / ``_load_from_checkpoint`` / ``_load_best_model`` / ``_push_from_checkpoint`` / ``_check_resumable``:
  every model folder is a plain causal LM (or LoRA adapter) with the value function beside it in ``value_model/``
  (:mod:`reft_trl.models.value_model`), restored on resume.

Data flow of one rollout (per process): prompts -> TRL generates one completion each -> reward callables score
them -> one no-grad policy forward gives old log-probs **and** values -> the reference gives ref log-probs ->
``token_rewards`` -> ``gae`` -> ``masked_whiten`` -> ``num_iterations`` epochs x ``steps_per_generation`` shuffled
micro-batches of ``policy_loss + vf_coef * value_loss``. Multi-turn rollouts (``tools=``, ``environment_factory=``,
``rollout_func=``): every step above runs on :func:`~reft_trl.trainers.rollout.action_mask`, the model's own tokens;
tool results stay in the context and GAE skips them (one step across each tool call).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel
from transformers.trainer_utils import HubStrategy

from reft_trl import core
from reft_trl.models.critic import critic_of
from reft_trl.models.serving import exclude_value_params_from_vllm_sync
from reft_trl.models.value_head import (
    VALUE_HEAD_NAME,
    MissingValueHeadError,
    capture_values,
    has_value_head,
    value_head,
)
from reft_trl.models.value_model import (
    VALUE_MODEL_DIR,
    attach_value_function,
    causal_lm_class_for,
    is_value_param,
    load_value_model,
    plain_adapter_config,
    save_value_model,
    saved_value_model,
    split_value_params,
    without_value_modules,
)
from reft_trl.trainers.ppo_metrics import rollout_metrics, update_metrics
from reft_trl.trainers.reft_config import ReFTConfig
from reft_trl.trainers.rollout import RolloutTrainer, action_mask

logger = logging.getLogger(__name__)


class ForwardCapture:
    """What one policy forward that runs inside TRL's code gave: its log-probs and entropies and, with a critic, the
    values (completion-aligned). Armed when created by ``ReFTTrainer._capture_forward``; the first forward disarms
    it."""

    __slots__ = ("armed", "entropies", "logps", "values")

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed
        self.logps: torch.Tensor | None = None
        self.entropies: torch.Tensor | None = None
        self.values: torch.Tensor | None = None


class ReFTTrainer(RolloutTrainer):
    """PPO for reasoning with a shared-trunk value head (ReFT, arXiv 2401.08967), as a thin GRPOTrainer subclass.

    Args:
        model: a model id/path or a ``PreTrainedModel`` (typically the SFT warm-up checkpoint). A folder written by
            a ReFT run (``value_model/``, or an earlier layout) restores its value head or critic; otherwise a fresh
            one is initialised (see ``ReFTConfig.value_head_init_std``). The reference model is a frozen copy of this checkpoint, reloaded by
            TRL from ``model.config._name_or_path`` (so an in-memory model must have been saved there), or the
            adapter-disabled policy under PEFT.
        reward_funcs: TRL reward callables and reward models (or a list, weighted by ``args.reward_weights``).
            Defaults to :class:`reft_trl.rewards.AnswerReward` reading the dataset's ``answer`` (and ``answer_format``
            / ``cot``) columns: 1 correct, ``partial_reward`` wrong but parsable, 0 unparsable. A one-label
            sequence-classification reward model (path or ``PreTrainedModel``) is scored by ``logits[:, 0]`` on
            what ``RewardTrainer`` trained it on (``args.reward_model_tokenization``; its tokenizer from
            ``reward_processing_classes`` or its path); a classifier with several labels must be
            wrapped as :class:`reft_trl.RewardModel` with its ``label`` (:class:`reft_trl.ORMReward` for this
            project's ORM).
        accuracy_dataset: prompt-only rows (``answer``, ``answer_format``, ``cot``, ``completion_prefix``) whose greedy
            answer accuracy is logged as ``eval_accuracy`` at every evaluation (``eval_strategy``).
        Other arguments are GRPOTrainer's.
    """

    _tag_names = ["trl", "reft", "ppo"]
    _name = "ReFT"
    _paper = {
        "title": "ReFT: Reasoning with Reinforced Fine-Tuning",
        "id": "2401.08967",
        "citation": textwrap.dedent("""\
            @inproceedings{luong2024reft,
                title        = {{ReFT: Reasoning with Reinforced Fine-Tuning}},
                author       = {Trung Quoc Luong and Xinbo Zhang and Zhanming Jie and Peng Sun and Xiaoran Jin and Hang Li},
                year         = 2024,
                booktitle    = {Proceedings of ACL},
                eprint       = {arXiv:2401.08967},
            }"""),
    }

    _config_class = ReFTConfig

    def __init__(self, *args, **kwargs):
        self._capture: ForwardCapture | None = None
        self._train_start: float | None = None
        self._episodes = 0
        super().__init__(*args, **kwargs)
        args = self.args
        self._kl_ctl = (
            core.AdaptiveKLController(args.beta, args.kl_target, args.kl_horizon)
            if args.kl_target is not None
            else None
        )
        if self.use_vllm:
            exclude_value_params_from_vllm_sync(self.vllm_generation)
        if is_peft_model(self.model) and has_value_head(self.model):
            value_head(self.model).requires_grad_(True)  # trained in full, not an adapter module (_prepare_policy)

    # ------------------------------------------------------------------------------------------------ model setup
    def _prepare_policy(self, model: PreTrainedModel, model_path: str, args: ReFTConfig, peft_config):
        """Attach the value function -- a value head, or a separate critic started from ``value_model_path`` (e.g. a
        reward model, its score layer as the head) -- and restore the one saved with ``model_path`` when it is a
        folder written by a run of the same ``value_model``. Critic-free estimators attach nothing.

        Under PEFT the head is trained in full but is not an adapter module (not in ``modules_to_save``), so the
        adapter file holds only the adapter's weights; it is marked trainable after TRL wraps the model."""
        if args.advantage_estimator != "gae":
            return peft_config
        if args.value_model == "separate" and (peft_config is not None or is_peft_model(model)):
            raise NotImplementedError(
                "value_model='separate' is not supported with PEFT (there is no LoRA critic: the critic would live "
                "inside the adapter-wrapped policy, whose adapters are switched off for the reference model). With "
                "PEFT use value_model='shared' (the default: the value head reads the LoRA-adapted trunk and is "
                "trained in full); for a separate critic (e.g. started from a reward model with value_model_path) "
                "train without PEFT."
            )
        init_kwargs = dict(args.model_init_kwargs or {})  # the critic loads like the policy, in the policy's dtype
        init_kwargs.setdefault("dtype", next(model.parameters()).dtype)
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            init_kwargs["device_map"] = None
        attach_value_function(
            model, model_path, value_model=args.value_model, value_model_path=args.value_model_path,
            init_std=args.value_head_init_std, seed=args.seed, **init_kwargs,
        )  # fmt: skip
        if peft_config is not None and VALUE_HEAD_NAME in (getattr(peft_config, "modules_to_save", None) or ()):
            peft_config = copy.deepcopy(peft_config)
            peft_config.modules_to_save = without_value_modules(peft_config.modules_to_save)
            logger.info("modules_to_save: the value head is trained by ReFTTrainer itself, not as an adapter module.")
        return peft_config

    def _policy_class(self, path: str, *, trust_remote_code: bool) -> type | None:
        """A class that does not report the value function an earlier reft-trl saved in the policy's own files as
        unexpected weights (it is loaded by :meth:`_prepare_policy`)."""
        return causal_lm_class_for(path, trust_remote_code=trust_remote_code)

    def _adapter_config(self, path: str):
        """An adapter folder's config without the value head in ``modules_to_save`` (reft-trl 0.1 put it there)."""
        return plain_adapter_config(path)

    # ----------------------------------------------------------------------------------------------- forward pass
    @property
    def uses_critic(self) -> bool:
        """Whether this run learns a value function (``advantage_estimator="gae"``) or is critic-free."""
        return self.args.advantage_estimator == "gae"

    @contextmanager
    def _capture_forward(self, armed: bool = True) -> Iterator[ForwardCapture]:
        """Within the block, the first policy forward TRL runs through :meth:`_get_per_token_logps_and_entropies`
        is recorded in the yielded :class:`ForwardCapture` (``armed=False``: none is). Captures nest: leaving the
        block restores the one that was active."""
        outer, self._capture = self._capture, ForwardCapture(armed)
        try:
            yield self._capture
        finally:
            self._capture = outer

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """GRPOTrainer's forward; when a capture is armed, also keep its log-probs and entropies and, with a critic,
        the values: the value head reads the hidden states of this very forward, so log-probs and values cost one
        trunk pass (a separate critic runs its own)."""
        capture = self._capture
        if capture is None or not capture.armed:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        capture.armed = False
        values = None
        if self.uses_critic and self.args.value_model == "shared":
            with capture_values(model, detach_trunk=self._critic_warmup_active()) as captured:
                out = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
                )
            values = torch.cat(captured, dim=0)
        else:
            out = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            if self.uses_critic:
                with self.accelerator.autocast():  # the same mixed precision as the policy's forward
                    values = critic_of(model)(input_ids, attention_mask)
        # The value of the state that emits completion token i is read at position P + i - 1.
        capture.values = None if values is None else values[:, -logits_to_keep - 1 : -1]
        capture.logps, capture.entropies = out[0], out[1]
        return out

    def _critic_warmup_active(self) -> bool:
        """During the first ``critic_warmup_steps`` optimizer steps only the value function learns."""
        return self.model.training and self.state.global_step < self.args.critic_warmup_steps

    # ---------------------------------------------------------------------------------------------------- rollout
    def _trl_computes_old_logps(self) -> bool:
        """Mirror of GRPOTrainer's rule for when its rollout runs a no-grad policy forward (``old_per_token_logps``)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _generate_and_score_completions(self, inputs):
        """The base rollout (which calls :meth:`_process_rollout`), capturing the no-grad policy forward of TRL's
        rollout when TRL's rule says it runs one."""
        if self._train_start is None and self.model.training:
            self._train_start = time.perf_counter()
        with self._capture_forward(armed=self._trl_computes_old_logps()):
            return super()._generate_and_score_completions(inputs)

    def _process_rollout(self, batch: dict[str, Any], inputs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        """PPO: old log-probs (and values, with a critic) from TRL's policy forward when it ran one, else from one
        here; then KL-shaped token rewards and the advantages (GAE, or a critic-free estimator).

        The values captured during TRL's rollout must come from the forward whose log-probs TRL returned as
        ``old_per_token_logps`` (the policy's, with its adapters on), not from a reference forward that a TRL release
        might run first: that is checked by identity, and any mismatch with TRL's rule stops training."""
        old_logps, capture = batch.get("old_per_token_logps"), self._capture
        expected = self._trl_computes_old_logps()
        if (old_logps is not None) != expected or (expected and old_logps is not capture.logps):
            import trl

            raise RuntimeError(
                f"trl {trl.__version__}: the rollout's forwards are not what ReFTTrainer relies on (it expected TRL "
                f"{'to' if expected else 'not to'} run a no-grad policy forward for old_per_token_logps, and to "
                "capture the values in that very forward before the reference forward). Training on would use the "
                "wrong values; use the TRL version listed in reft-trl's requirements."
            )
        if old_logps is None:
            input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            with torch.no_grad(), self._capture_forward() as capture:
                self._get_per_token_logps_and_entropies(
                    self.model,
                    input_ids,
                    attention_mask,
                    batch["completion_ids"].size(1),
                    batch_size=self._rollout_forward_batch_size(mode),
                )
            old_logps = capture.logps
        return self._ppo_advantages(batch, old_logps, capture.values, mode)

    def _rollout_forward_batch_size(self, mode: str) -> int:
        return self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size

    def _kl_coef(self) -> float:
        """The KL coefficient of this rollout: ``beta``, or the adaptive controller's current value."""
        return self._kl_ctl.value if self._kl_ctl is not None else self.args.beta

    def _ppo_advantages(self, batch: dict[str, Any], old_logps, values, mode: str) -> dict[str, Any]:
        args = self.args
        completion_ids = batch["completion_ids"]
        mask = action_mask(batch).to(old_logps.dtype)
        scores = self._local_scores(completion_ids.size(0)).to(old_logps.device)
        # A completion ended by EOS: its last token is one (a multi-turn completion has an EOS at the end of every
        # assistant turn, also when its last turn was truncated).
        eos = torch.tensor(self.eos_token_ids, device=completion_ids.device)
        lengths = batch["completion_mask"].sum(dim=1)
        last = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        has_eos = torch.isin(last, eos) & (lengths > 0)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).to(scores.dtype)

        ref_logps = batch.pop("ref_per_token_logps", None)
        kl_coef = self._kl_coef()
        rewards = core.token_rewards(scores, old_logps, ref_logps, mask, kl_coef, args.kl_estimator)
        # Whitening needs 2 tokens: a rollout whose completions are all masked (mask_truncated_completions) has none.
        whiten = self._global_sum(mask.sum().reshape(1)).item() >= 2
        if args.whiten_rewards and whiten:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, all_reduce=self._global_sum)
        if self.uses_critic:
            advantages, returns = core.gae(rewards, values, mask, args.gamma, args.lam)
            if args.advantage_whitening != "none" and whiten:
                reduce = self._global_sum if args.advantage_whitening == "global" else None
                advantages = core.masked_whiten(advantages, mask, all_reduce=reduce)
            batch.update(returns=returns, old_values=values)
        else:
            advantages = self._outcome_advantages(rewards, mask)
        batch.update(advantages=advantages, old_per_token_logps=old_logps, scores=scores)

        mean_kl = self._log_rollout_metrics(mode, scores, old_logps, ref_logps, values, batch.get("returns"), mask)
        metrics = self._metrics[mode]
        metrics["objective/kl_coef"].append(kl_coef)
        metrics["val/num_eos_tokens"].append(self.accelerator.gather(has_eos.sum()).sum().item())
        if mode == "train":
            completions = scores.numel() * self.accelerator.num_processes  # every process rolls out as many
            # episodes (completions) per second since training started, as TRL <= 1.12 logged it
            self._episodes += completions
            metrics["eps"].append(self._episodes / max(time.perf_counter() - self._train_start, 1e-9))
            if self._kl_ctl is not None and mean_kl is not None:
                self._kl_ctl.update(mean_kl, n_steps=completions)
        return batch

    def _outcome_advantages(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A critic-free estimator over the global batch: every process's token rewards are gathered (groups of
        ``num_generations`` consecutive samples answer one prompt, as TRL lays them out), and this process keeps its
        rows."""
        args = self.args
        width = torch.tensor([rewards.size(1)], device=rewards.device)
        max_width = int(self.accelerator.gather(width).max())
        pad = (0, max_width - rewards.size(1))
        all_rewards = self.accelerator.gather(torch.nn.functional.pad(rewards, pad))
        all_mask = self.accelerator.gather(torch.nn.functional.pad(mask, pad))
        if all_mask.sum() < 2:  # every completion masked (mask_truncated_completions): nothing to learn from
            return torch.zeros_like(rewards)
        group_ids = torch.arange(all_rewards.size(0)) // self.num_generations
        advantages, _ = core.outcome_advantages(
            all_rewards,
            all_mask,
            args.advantage_estimator,
            group_ids=group_ids.tolist(),
            gamma=args.gamma,
            norm_by_std=args.scale_rewards not in ("none", False),
        )
        start = self.accelerator.process_index * rewards.size(0)
        return advantages[start : start + rewards.size(0), : rewards.size(1)]

    def _log_rollout_metrics(self, mode, scores, old_logps, ref_logps, values, returns, mask) -> float | None:
        """Log :func:`~reft_trl.trainers.ppo_metrics.rollout_metrics`; returns the mean sequence KL to the reference
        (k1), or None without a reference."""
        metrics = self._metrics[mode]
        if self.num_generations == 1:
            metrics.pop("frac_reward_zero_std", None)  # a GRPO group statistic, meaningless with one sample each
        logged = rollout_metrics(
            scores, old_logps, ref_logps, values, returns, mask, kl_coef=self._kl_coef(),
            kl_estimator=self.args.kl_estimator, gather=self.accelerator.gather, global_sum=self._global_sum,
        )  # fmt: skip
        for name, value in logged.items():
            metrics[name].append(value)
        return logged.get("objective/kl")

    # ------------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        """GRPOTrainer's policy term on ReFT's per-token advantages, plus ``vf_coef`` * the clipped value loss.

        The policy term is GRPOTrainer's own ``_compute_loss`` (so ``loss_type``, ``epsilon_high``, ``delta``,
        ``importance_sampling_level``, ``top_entropy_quantile``, ``off_policy_mask_threshold``, the entropy bonus and
        vLLM's importance-sampling correction act exactly as they do in GRPO) with its KL-in-loss term switched off:
        the KL lives in the reward. Its forward also gives the values (one trunk pass). The value loss is aggregated
        like the policy loss. During ``critic_warmup_steps`` the policy term is multiplied by 0 and the value loss
        does not reach the shared trunk, so only the value head (or separate critic) learns.
        """
        args = self.args
        mode = "train" if self.model.training else "eval"
        warmup = self._critic_warmup_active()
        beta, self.beta = self.beta, 0.0  # KL-shaped rewards instead of GRPO's KL term in the loss
        try:
            with self._capture_forward() as capture:
                pg_loss = super()._compute_loss(model, inputs)
        finally:
            self.beta = beta
        if warmup:
            pg_loss = pg_loss * 0.0
        mask = action_mask(inputs).to(capture.logps.dtype)
        loss, vf_loss = pg_loss, None
        if self.uses_critic:
            vf_loss = self._value_loss(capture.values, inputs, mask, mode)
            loss = pg_loss + args.vf_coef * vf_loss

        not_finite = self._global_sum((~torch.isfinite(loss.detach())).float().reshape(1))
        if not_finite.item() > 0:
            raise FloatingPointError(
                f"Non-finite PPO loss at step {self.state.global_step} (policy loss {pg_loss.item()}, value loss "
                f"{None if vf_loss is None else vf_loss.item()}): stopping before the optimizer step, so no "
                "checkpoint holds corrupted weights."
            )
        logged = update_metrics(
            capture.logps, inputs["old_per_token_logps"], capture.entropies, inputs["advantages"], capture.values,
            inputs.get("old_values"), inputs.get("returns"), mask, pg_loss, vf_loss, cliprange=args.epsilon,
            cliprange_value=args.cliprange_value, gather=self.accelerator.gather,
        )  # fmt: skip
        for name, value in logged.items():
            self._metrics[mode][name].append(value)
        return loss

    def _value_loss(self, values, inputs, mask, mode) -> torch.Tensor:
        """The clipped value loss, aggregated and scaled for gradient accumulation exactly as GRPOTrainer scales the
        policy term of ``loss_type`` (``dapo``: token sum over the accumulation window's tokens)."""
        args = self.args
        agg = core.LOSS_TYPE_AGGREGATION[args.loss_type]
        vf = core.value_loss(
            values,
            inputs["old_values"],
            inputs["returns"],
            mask,
            args.cliprange_value,
            loss_agg_mode=agg,
            max_len=args.max_completion_length,
        )
        if args.loss_type == "dapo":
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * self.current_gradient_accumulation_steps / args.steps_per_generation
            return vf * mask.size(0) / normalizer
        return vf / self.current_gradient_accumulation_steps if mode == "train" else vf

    # --------------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Every model folder (``save_model``, each ``checkpoint-N``) holds the policy as a plain causal LM (or a PEFT
        adapter of LoRA weights only) and the value function beside it in ``value_model/``
        (:mod:`reft_trl.models.value_model`), where vLLM and ``from_pretrained`` do not look."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.model.state_dict()
        policy, value = split_value_params(state_dict)
        super()._save(output_dir, state_dict=policy)
        if self.args.should_save:  # value == {} (ZeRO-3 without gathered weights: DeepSpeed's checkpoint holds it)
            # clears what an earlier save into output_dir left
            backbone = (
                critic_of(self.model).backbone if self.uses_critic and self.args.value_model == "separate" else None
            )
            save_value_model(output_dir, value, critic_backbone=backbone)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The policy as transformers loads it, then the value function from ``value_model/`` (DeepSpeed and FSDP
        restore it with the rest of their own checkpoint, except FSDP under PEFT: its sharded checkpoint holds the
        adapter only, so the value head, not an adapter module, is restored from ``value_model/``, shard by shard)."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = model if model is not None else self.model
        engine_restores_it = self.is_deepspeed_enabled or (self.is_fsdp_enabled and not is_peft_model(model))
        if self.uses_critic and not engine_restores_it:
            load_value_model(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        best = self.state.best_model_checkpoint
        if self.uses_critic and not (self.is_deepspeed_enabled or self.is_fsdp_enabled) and os.path.isdir(best):
            load_value_model(self.model, best)  # (a node without the folder: transformers warned about the policy)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """transformers copies the checkpoint's top-level model files to ``output_dir`` and uploads that folder: the
        value function beside them goes along, so that both stay one step's. Copied exactly when transformers copies
        the policy's files (its own guard: not at ``hub_strategy="end"``, not while the previous push runs)."""
        busy = (
            not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done()
        )
        if self.is_world_process_zero() and self.args.hub_strategy != HubStrategy.END and not busy:
            source, target = Path(checkpoint_folder) / VALUE_MODEL_DIR, Path(self.args.output_dir) / VALUE_MODEL_DIR
            if target.exists():
                shutil.rmtree(target)
            if source.is_dir():
                shutil.copytree(source, target)
        super()._push_from_checkpoint(checkpoint_folder)

    def _issue_warnings_after_load(self, load_result) -> None:
        """The policy's files do not hold the value function (``value_model/`` does): not a missing key."""
        missing = [k for k in load_result.missing_keys if not is_value_param(k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _check_resumable(self, checkpoint: str) -> None:
        """The checkpoint must hold the value function this run trains: a value head (``value_model="shared"``), a
        separate critic (``"separate"``), or neither (a critic-free estimator). Otherwise transformers would load it
        with a "missing keys" warning and train a fresh zero head, or fail on the optimizer's parameter groups."""
        saved = saved_value_model(checkpoint)
        wanted = self.args.value_model if self.uses_critic else None
        if saved == wanted:
            return
        describe = {None: "no critic", "shared": "value_model='shared'", "separate": "value_model='separate'"}
        this_run = describe[wanted] if wanted else f"no critic (advantage_estimator={self.args.advantage_estimator!r})"
        message = (
            f"Cannot resume from {checkpoint}: it was saved with {describe[saved]}, this run has {this_run}. Resume "
            "with the settings it was trained with, or start a new run from its weights (model=<checkpoint>)."
        )
        if saved is None and wanted == "shared":
            raise MissingValueHeadError(
                message + f" (It holds no value head: neither {VALUE_MODEL_DIR}/ nor `{VALUE_HEAD_NAME}.*` weights.)"
            )
        raise ValueError(message)

    def _rollout_state(self) -> dict[str, Any]:
        return {"kl_controller": None if self._kl_ctl is None else self._kl_ctl.state_dict()}

    def _load_rollout_state(self, state: dict[str, Any]) -> None:
        if self._kl_ctl is not None and state.get("kl_controller") is not None:
            self._kl_ctl.load_state_dict(state["kl_controller"])


__all__ = ["ForwardCapture", "ReFTTrainer"]
