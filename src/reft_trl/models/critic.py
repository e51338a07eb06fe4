"""The separate critic: a value model with its own trunk (the paper's ablation, and TRL <= 1.12's value model).

It lives as a submodule of the policy (``policy.critic``), so the optimizer, DeepSpeed, checkpoints and
``resume_from_checkpoint`` handle it without a second training loop; :mod:`reft_trl.models.value_model` saves it
beside the policy, never in the policy's weight files. The default value function is the head on the policy's own
trunk (:mod:`reft_trl.models.value_head`): one forward for log-probs and values.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from reft_trl.models.reward_model import is_sequence_classifier
from reft_trl.models.value_head import hidden_size, unwrap_causal_lm

logger = logging.getLogger(__name__)

CRITIC_NAME = "critic"
"""The critic's attribute on the causal LM (``model.critic``), and the first part of its parameter names."""


class SeparateCritic(nn.Module):
    """A trunk (``backbone``: a transformers base model such as ``LlamaModel``) and a zero-initialised
    ``Linear(hidden, 1)`` value head; ``forward`` gives one value per input position (float32)."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        reference = next(backbone.parameters())
        self.v_head = nn.Linear(hidden_size(backbone), 1, device=reference.device, dtype=reference.dtype)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()


def has_critic(model: nn.Module) -> bool:
    return hasattr(unwrap_causal_lm(model), CRITIC_NAME)


def critic_of(model: nn.Module) -> SeparateCritic:
    """The separate critic attached to ``model`` (through PEFT and DDP/DeepSpeed wrappers)."""
    return getattr(unwrap_causal_lm(model), CRITIC_NAME)


def attach_critic(model: nn.Module, critic: SeparateCritic) -> nn.Module:
    unwrap_causal_lm(model).add_module(CRITIC_NAME, critic)
    return model


def build_critic(path: str, policy: nn.Module, *, policy_path: str, **from_pretrained_kwargs) -> SeparateCritic:
    """The critic started from the checkpoint at ``path``: its trunk, and a zero value head -- or, from a one-label
    sequence classifier such as a reward model, its score layer as the head (TRL 1.12's examples started the value
    model as a copy of the reward model).

    The critic reads the policy's token ids: a checkpoint with another saved tokenizer than ``policy_path``'s or a
    smaller vocabulary is refused, and so is a PEFT adapter folder (merge it first)."""
    if (Path(path) / "adapter_config.json").is_file():
        raise ValueError(
            f"value_model_path={path!r} is a PEFT adapter; the critic starts from a full checkpoint. Merge it "
            "first: PeftModel.from_pretrained(base, path).merge_and_unload().save_pretrained(merged_path)."
        )
    trust_remote_code = from_pretrained_kwargs.get("trust_remote_code", False)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"value_model_path={path!r}: no model there (not a local checkpoint folder, and not loadable as a "
            f"hub id: {err})"
        ) from err
    score = None
    if is_sequence_classifier(config) and config.num_labels == 1:
        classifier = AutoModelForSequenceClassification.from_pretrained(path, **from_pretrained_kwargs)
        backbone = classifier.base_model
        heads = [m for m in classifier.children() if isinstance(m, nn.Linear) and m.out_features == 1]
        score = heads[0] if len(heads) == 1 else None
        if score is None:
            logger.warning(
                "%s is a classifier whose score layer is not one Linear(hidden, 1): the critic's value head "
                "starts from zeros.",
                path,
            )
    else:
        backbone = AutoModel.from_pretrained(path, **from_pretrained_kwargs)
    if path != policy_path:
        _check_same_tokenizer(path, policy_path, trust_remote_code)
    vocab, policy_vocab = _vocab_size(backbone.config), _vocab_size(policy.config)
    if vocab < policy_vocab:
        raise ValueError(
            f"value_model_path={path!r} has a vocabulary of {vocab} tokens, the policy {policy_vocab}: the critic "
            "reads the policy's token ids, so it needs the policy's tokenizer."
        )
    critic = SeparateCritic(backbone)
    if score is not None:
        with torch.no_grad(), _gathered(list(score.parameters())):
            critic.v_head.weight.copy_(score.weight)
            if score.bias is not None:
                critic.v_head.bias.copy_(score.bias)
        logger.info("The critic starts from %s with its score layer as the value head.", path)
    return critic


def _gathered(params: list[nn.Parameter]):
    """The full tensors of ``params`` inside the block when DeepSpeed ZeRO-3 loaded them partitioned (transformers
    does under a ZeRO-3 config with ``zero3_init_flag``: each process then holds a 0-element placeholder)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def _check_same_tokenizer(critic_path: str, policy_path: str, trust_remote_code: bool) -> None:
    """Refuse a critic checkpoint whose saved tokenizer differs from the policy checkpoint's (when both have one)."""
    from transformers import AutoTokenizer

    try:
        critic = AutoTokenizer.from_pretrained(critic_path, trust_remote_code=trust_remote_code).get_vocab()
        policy = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=trust_remote_code).get_vocab()
    except (OSError, ValueError, TypeError):
        return  # no tokenizer saved with one of them: only the vocabulary sizes can be compared
    if critic != policy:
        differ = sum(critic.get(token) != i for token, i in policy.items()) + len(set(critic) - set(policy))
        raise ValueError(
            f"value_model_path={critic_path!r} has another tokenizer than the policy {policy_path!r} ({differ} tokens "
            "differ): the critic reads the policy's token ids, so it must share the policy's tokenizer."
        )


def _vocab_size(config) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "vocab_size", 0) or 0)


__all__ = ["CRITIC_NAME", "SeparateCritic", "attach_critic", "build_critic", "critic_of", "has_critic"]
