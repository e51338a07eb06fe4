"""A value head on the policy's shared trunk: one forward gives both the log-probs and the values.

Since TRL 1.15, trainers replace the causal LM's forward by a *fused LM head* that projects the backbone's hidden
states straight to per-token log-probabilities: ``lm_head.forward`` is never called and no hidden states come back.
So the values are computed by a forward hook on the **backbone** (``model.base_model``, e.g. ``LlamaModel``): while
capturing is switched on (:func:`capture_values`), the hook applies ``v_head`` to ``last_hidden_state`` and keeps
the result. The head is a plain ``nn.Linear(hidden_size, 1)`` registered as ``model.v_head``, so it is a parameter of
the model like any other: the optimizer, DeepSpeed and Trainer checkpoints handle it. Under PEFT it is trained in
full (``ReFTTrainer`` marks it trainable after wrapping; it is not an adapter weight).

Where the head is saved -- beside the policy, never in the policy's weight files -- is
:mod:`reft_trl.models.value_model`'s concern.

Initialisation: a fresh head (starting from an SFT warm-up checkpoint, which has none) is zero-initialised by
default, so ``V = 0`` everywhere at the first rollout: the first advantages are the KL-shaped returns and the value
loss sends no random gradient into the shared trunk before the head has learned anything. ``init_std > 0`` draws
the weight from ``N(0, init_std)`` instead (the ReFT reference used PyTorch's default ``Linear`` init).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

VALUE_HEAD_NAME = "v_head"
"""The head's attribute on the causal LM (``model.v_head``), and the first part of its parameter names."""


class MissingValueHeadError(ValueError):
    """Raised when a checkpoint that should carry a value head has none."""


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside ``model`` (unwraps PEFT and DDP/DeepSpeed wrappers)."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DeepSpeedEngine
            model = model.module
        else:
            return model


def _backbone(causal_lm: nn.Module) -> nn.Module:
    backbone = getattr(causal_lm, "base_model", None)
    if backbone is None or backbone is causal_lm:
        raise TypeError(
            f"{type(causal_lm).__name__} exposes no separate backbone (`base_model`): a value head needs the hidden "
            "states of a transformers *ForCausalLM model's backbone."
        )
    return backbone


def hidden_size(model_or_config) -> int:
    """The hidden size of a model or config (the text config of a multimodal one)."""
    config = getattr(model_or_config, "config", model_or_config)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return config.hidden_size


class _Capture:
    """Per-model capture state; the backbone hook appends to ``values`` while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.detach_trunk = False
        self.values: list[torch.Tensor] = []


def _value_hook(causal_lm: nn.Module, capture: _Capture):
    def hook(module, args, output):
        if not capture.active:
            return None
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        head = getattr(causal_lm, VALUE_HEAD_NAME)
        weight = next(head.parameters())
        if capture.detach_trunk:
            hidden = hidden.detach()
        capture.values.append(head(hidden.to(weight.dtype)).squeeze(-1).float())
        return None

    return hook


def has_value_head(model: nn.Module) -> bool:
    return hasattr(unwrap_causal_lm(model), VALUE_HEAD_NAME)


def value_head(model: nn.Module) -> nn.Linear:
    """The ``Linear(hidden, 1)`` value head of ``model`` (through PEFT and DDP/DeepSpeed wrappers; the trained copy
    of a head that an old checkpoint put in PEFT's ``modules_to_save``)."""
    head = getattr(unwrap_causal_lm(model), VALUE_HEAD_NAME)
    if hasattr(head, "modules_to_save"):  # PEFT ModulesToSaveWrapper (reft-trl <= 0.1 adapters)
        head = head.modules_to_save[head.active_adapter if isinstance(head.active_adapter, str) else "default"]
    return head


def add_value_head(model: nn.Module, *, init_std: float = 0.0, seed: int | None = None) -> nn.Module:
    """Attach a fresh ``Linear(hidden_size, 1)`` value head (``model.v_head``) and the capture hook; returns ``model``.

    Works on a plain transformers model or a PEFT-wrapped one (the head goes on the causal LM inside). Idempotent: a
    model that already has a head keeps it.
    """
    causal_lm = unwrap_causal_lm(model)
    if hasattr(causal_lm, VALUE_HEAD_NAME):
        return model
    reference = causal_lm.get_output_embeddings().weight
    head = nn.Linear(hidden_size(causal_lm), 1, device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        if init_std > 0:
            generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
            weight = torch.randn(head.weight.shape, generator=generator) * init_std
            head.weight.copy_(weight.to(head.weight.dtype))
        else:
            head.weight.zero_()
        head.bias.zero_()
    causal_lm.add_module(VALUE_HEAD_NAME, head)
    if getattr(causal_lm, "_reft_value_capture", None) is None:
        capture = _Capture()
        causal_lm._reft_value_capture = capture
        _backbone(causal_lm).register_forward_hook(_value_hook(causal_lm, capture))
    return model


@contextmanager
def capture_values(model: nn.Module, *, detach_trunk: bool = False) -> Iterator[list[torch.Tensor]]:
    """Within this context, every forward of ``model`` appends ``(B, seq_len)`` values (float32) to the yielded list.

    Values are aligned with the *input* positions: the value of the state that emits completion token ``i`` is the
    hidden state at ``P + i - 1``, i.e. ``values[:, -T - 1:-1]`` for ``T`` completion tokens. ``detach_trunk`` stops
    the value loss's gradient at the head's input, so only the head learns from it (critic warm-up).
    """
    causal_lm = unwrap_causal_lm(model)
    capture = getattr(causal_lm, "_reft_value_capture", None)
    if capture is None:
        raise MissingValueHeadError("This model has no value head: call reft_trl.models.add_value_head(model) first.")
    if capture.active:
        raise RuntimeError("capture_values() is already active on this model (nested captures are not supported).")
    capture.active, capture.values, capture.detach_trunk = True, [], detach_trunk
    try:
        yield capture.values
    finally:
        capture.active, capture.detach_trunk = False, False


def value_head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the head's ``weight`` and ``bias``."""
    return {k: v.detach().clone() for k, v in value_head(model).state_dict().items()}


__all__ = [
    "VALUE_HEAD_NAME",
    "MissingValueHeadError",
    "add_value_head",
    "capture_values",
    "has_value_head",
    "hidden_size",
    "unwrap_causal_lm",
    "value_head",
    "value_head_state_dict",
]
