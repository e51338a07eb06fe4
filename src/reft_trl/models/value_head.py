"""A value head on the policy's shared trunk: one forward gives both the log-probs and the values.

Since TRL 1.15, trainers replace the causal LM's forward by a *fused LM head* that projects the backbone's hidden
states straight to per-token log-probabilities: ``lm_head.forward`` is never called and no hidden states come back.
So the values are computed by a forward hook on the **backbone** (``model.base_model``, e.g. ``LlamaModel``): while
capturing is switched on (:func:`capture_values`), the hook applies ``v_head`` to ``last_hidden_state`` and keeps
the result. The head is a plain ``nn.Linear(hidden_size, 1)`` registered as ``model.v_head``, so it is part of the
model's ``state_dict``: ``save_pretrained`` writes ``v_head.weight`` / ``v_head.bias`` next to the LM weights,
Trainer checkpoints and ``resume_from_checkpoint`` restore it, DeepSpeed/accelerate shard and optimise it like any
other parameter, and under PEFT it goes in ``modules_to_save`` (trainable, saved in the adapter file).

``from_pretrained`` drops ``v_head.*`` as unexpected keys (and transformers prints them in a LOAD REPORT);
:func:`load_causal_lm` loads a checkpoint with those keys expected, and :func:`load_value_head` puts them back.

Initialisation: a fresh head (starting from an SFT warm-up checkpoint, which has none) is zero-initialised by
default, so ``V = 0`` everywhere at the first rollout: the first advantages are the KL-shaped returns and the value
loss sends no random gradient into the shared trunk before the head has learned anything. ``init_std > 0`` draws
the weight from ``N(0, init_std)`` instead (the ReFT reference used PyTorch's default ``Linear`` init).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

VALUE_HEAD_NAME = "v_head"
CRITIC_NAME = "critic"


class MissingValueHeadError(ValueError):
    """Raised when a checkpoint that should carry a value head has none."""


def _causal_lm(model: nn.Module) -> nn.Module:
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


def _hidden_size(causal_lm: nn.Module) -> int:
    config = causal_lm.config.get_text_config() if hasattr(causal_lm.config, "get_text_config") else causal_lm.config
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
        head = getattr(causal_lm, VALUE_HEAD_NAME)  # looked up per call: PEFT wraps it in modules_to_save
        weight = next(head.parameters())
        if capture.detach_trunk:
            hidden = hidden.detach()
        capture.values.append(head(hidden.to(weight.dtype)).squeeze(-1).float())
        return None

    return hook


def has_value_head(model: nn.Module) -> bool:
    return hasattr(_causal_lm(model), VALUE_HEAD_NAME)


def add_value_head(model: nn.Module, *, init_std: float = 0.0, seed: int | None = None) -> nn.Module:
    """Attach a fresh ``Linear(hidden_size, 1)`` value head (``model.v_head``) and the capture hook; returns ``model``.

    Call it on the plain transformers model, before PEFT wrapping. Idempotent: a model that already has a head keeps
    it.
    """
    causal_lm = _causal_lm(model)
    if hasattr(causal_lm, VALUE_HEAD_NAME):
        return model
    reference = causal_lm.get_output_embeddings().weight
    head = nn.Linear(_hidden_size(causal_lm), 1, device=reference.device, dtype=reference.dtype)
    with torch.no_grad():
        if init_std > 0:
            generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
            weight = torch.randn(head.weight.shape, generator=generator) * init_std
            head.weight.copy_(weight.to(head.weight.dtype))
        else:
            head.weight.zero_()
        head.bias.zero_()
    causal_lm.add_module(VALUE_HEAD_NAME, head)
    _install_hook(causal_lm)
    return model


def _install_hook(causal_lm: nn.Module) -> None:
    if getattr(causal_lm, "_reft_value_capture", None) is not None:
        return
    capture = _Capture()
    causal_lm._reft_value_capture = capture
    _backbone(causal_lm).register_forward_hook(_value_hook(causal_lm, capture))


@contextmanager
def capture_values(model: nn.Module, *, detach_trunk: bool = False) -> Iterator[list[torch.Tensor]]:
    """Within this context, every forward of ``model`` appends ``(B, seq_len)`` values (float32) to the yielded list.

    Values are aligned with the *input* positions: the value of the state that emits completion token ``i`` is the
    hidden state at ``P + i - 1``, i.e. ``values[:, -T - 1:-1]`` for ``T`` completion tokens. ``detach_trunk`` stops
    the value loss's gradient at the head's input, so only the head learns from it (critic warm-up).
    """
    causal_lm = _causal_lm(model)
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
    head = getattr(_causal_lm(model), VALUE_HEAD_NAME)
    if hasattr(head, "modules_to_save"):  # PEFT ModulesToSaveWrapper
        head = head.modules_to_save[head.active_adapter if isinstance(head.active_adapter, str) else "default"]
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def _weight_files(path: Path, wanted=None) -> list[Path]:
    """The weight files of a model or adapter directory (safetensors, sharded or not, or pytorch .bin); with
    ``wanted(key)``, only the shards of a sharded checkpoint that hold a wanted key."""
    files: list[Path] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files += sorted({path / f for k, f in weight_map.items() if wanted is None or wanted(k)})
    files += [
        path / name
        for name in ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
        if (path / name).exists()
    ]
    return files


def _read_tensors(file: Path, wanted) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted(k)}  # noqa: SIM118
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if wanted(k)}


def saved_parameter_names(path: str | os.PathLike) -> set[str]:
    """Names of the tensors saved in a model or adapter directory (read from the files' headers where possible)."""
    path, names = Path(path), set()
    for file in _weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                names.update(f.keys())
        else:
            names.update(torch.load(file, map_location="cpu", weights_only=True))
    return names


def _is_value_head_key(key: str) -> bool:
    return VALUE_HEAD_NAME in key.split(".")


def _read_value_head_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """``v_head.*`` tensors from a model or adapter directory (safetensors, sharded or not, or pytorch .bin)."""
    found: dict[str, torch.Tensor] = {}
    for file in _weight_files(path, _is_value_head_key):
        for key, tensor in _read_tensors(file, _is_value_head_key).items():
            # "v_head.weight", "base_model.model.v_head.modules_to_save.default.weight", ... -> "weight" / "bias"
            found[key.rsplit(".", 1)[-1]] = tensor
    return found or None


def load_value_head(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> bool:
    """Load the ``v_head`` weights saved in ``path`` into ``model`` (which gets a head if it has none).

    Returns True when a head was found and loaded. When the checkpoint has none: ``strict=True`` raises
    :class:`MissingValueHeadError`; ``strict=False`` keeps a freshly initialised head and returns False.
    """
    add_value_head(model)
    path = Path(path)
    tensors = _read_value_head_tensors(path) if path.is_dir() else None
    if tensors is None:
        if strict:
            raise MissingValueHeadError(
                f"No value head (`{VALUE_HEAD_NAME}.weight`) in the checkpoint at {path}. It looks like a base or SFT "
                "model: to start PPO from it, let ReFTTrainer initialise a fresh head (the default when the "
                "checkpoint has none), or call reft_trl.models.add_value_head(model) yourself."
            )
        return False
    head = getattr(_causal_lm(model), VALUE_HEAD_NAME)
    if hasattr(head, "modules_to_save"):
        head = head.modules_to_save["default"]
    missing = {"weight", "bias"} - set(tensors)
    if missing:
        raise MissingValueHeadError(f"Incomplete value head in {path}: missing {sorted(missing)}.")
    with torch.no_grad():
        head.weight.copy_(tensors["weight"].reshape(head.weight.shape))
        head.bias.copy_(tensors["bias"].reshape(head.bias.shape))
    return True


def load_model_with_value_head(
    path: str | os.PathLike, *, require_value_head: bool = True, **from_pretrained_kwargs
) -> nn.Module:
    """Load a causal LM with its value head: a checkpoint saved by ReFTTrainer (full model or PEFT adapter), or by
    old TRL's ``AutoModelForCausalLMWithValueHead`` (the head under ``v_head.summary.*``: in the model's weights, or
    for a PEFT model alone in ``pytorch_model.bin`` beside the adapter). The head is loaded as ``model.v_head``.

    ``require_value_head=True`` raises :class:`MissingValueHeadError` when the checkpoint has none; ``False`` gives
    a fresh zero head instead."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        peft_config = PeftConfig.from_pretrained(str(path))
        base = AutoModelForCausalLM.from_pretrained(peft_config.base_model_name_or_path, **from_pretrained_kwargs)
        add_value_head(base)
        model = PeftModel.from_pretrained(base, str(path))
        # ReFT adapters hold the head (modules_to_save); old TRL saved it beside the adapter: load it either way
        if not load_value_head(model, path, strict=False) and require_value_head:
            raise MissingValueHeadError(f"The adapter at {path} saved no value head (`{VALUE_HEAD_NAME}`).")
        return model
    model = load_causal_lm(path, **from_pretrained_kwargs)
    load_value_head(model, path, strict=require_value_head)
    return model


_VALUE_KEY_PATTERNS = (rf"(^|\.){VALUE_HEAD_NAME}\.", rf"(^|\.){CRITIC_NAME}\.")


@functools.cache
def _expecting_value_head(model_class: type) -> type:
    """``model_class`` whose ``from_pretrained`` does not report saved ``v_head.*`` / ``critic.*`` weights as
    unexpected keys (they are not loaded by it either). The model it returns is a plain ``model_class`` instance."""
    ignored = [*(model_class._keys_to_ignore_on_load_unexpected or ()), *_VALUE_KEY_PATTERNS]

    def from_pretrained(cls, *args, **kwargs):
        model = super(expecting, cls).from_pretrained(*args, **kwargs)
        model.__class__ = model_class
        return model

    namespace = {
        "_keys_to_ignore_on_load_unexpected": ignored,
        "from_pretrained": classmethod(from_pretrained),
        "__module__": model_class.__module__,
        "__qualname__": model_class.__qualname__,
    }
    expecting = type(model_class.__name__, (model_class,), namespace)
    return expecting


def causal_lm_class_expecting_value_head(path: str | os.PathLike, *, trust_remote_code: bool = False) -> type | None:
    """The class TRL's ``create_model_from_path`` would load ``path`` with (its config's first architecture), such that
    a ReFT checkpoint's value head is expected rather than reported as unexpected; ``None`` when transformers has no
    class of that name (remote code: transformers then reports the keys as usual)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    return _expecting_value_head(model_class) if model_class is not None else None


def load_causal_lm(path: str | os.PathLike, **from_pretrained_kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` for a policy checkpoint, without reporting a saved value head
    (or separate critic) as a problem: generation and evaluation do not need it, and it is not loaded."""
    from transformers import AutoModelForCausalLM

    trust = from_pretrained_kwargs.get("trust_remote_code", False)
    model_class = causal_lm_class_expecting_value_head(path, trust_remote_code=trust) or AutoModelForCausalLM
    return model_class.from_pretrained(str(path), **from_pretrained_kwargs)


def is_value_param(name: str) -> bool:
    """True for parameters of the value head or of a separate critic (never sent to a vLLM engine)."""
    parts = name.split(".")
    return VALUE_HEAD_NAME in parts or CRITIC_NAME in parts
