"""Where a run keeps its value function: beside the policy, in a ``value_model/`` subfolder no model loader reads.

A folder written by reft-trl's trainers (``save_model`` and every ``checkpoint-N``) is a plain causal-LM folder --
its top-level weight files hold exactly the causal LM's parameters, so vLLM, SGLang and ``AutoModelForCausalLM`` load
it strictly (a PEFT adapter folder holds only the adapter's weights) -- plus, when the run trains a critic::

    output_dir/
      config.json  generation_config.json  model.safetensors  tokenizer.json ...   # the policy, as for any causal LM
      value_model/
        value_head.safetensors       # "weight" (1, hidden) and "bias" (1,): the value head
        config.json  model.safetensors    # value_model="separate" only: the critic's trunk (AutoModel loads it)

vLLM reads every *top-level* ``*.safetensors`` of a folder (filtered by ``model.safetensors.index.json``), so the
value function must not be one; in a subfolder it is invisible to it, to SGLang and to ``from_pretrained``. This
module owns that layout: :func:`split_value_params` separates the value function's parameters from a model's state
dict (what the trainers save), :func:`save_value_model` writes the subfolder, :func:`load_value_model` restores it
into a model -- from this layout or from the layouts of earlier versions: reft-trl <= 0.1 saved ``v_head.*`` /
``critic.*`` inside the policy's weight files (and the head inside a PEFT adapter, in ``modules_to_save``), TRL <=
0.11's ``AutoModelForCausalLMWithValueHead`` saved ``v_head.summary.*`` (for PEFT models alone in
``pytorch_model.bin`` beside the adapter). :func:`reft_trl.models.export.export` rewrites any of them in
this layout (``python -m reft_trl.models export SRC DST``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from reft_trl.models.critic import CRITIC_NAME, critic_of, has_critic
from reft_trl.models.value_head import (
    VALUE_HEAD_NAME,
    MissingValueHeadError,
    add_value_head,
    has_value_head,
    unwrap_causal_lm,
    value_head,
)

logger = logging.getLogger(__name__)

VALUE_MODEL_DIR = "value_model"
"""The subfolder of a model folder that holds its value function."""
VALUE_HEAD_FILE = "value_head.safetensors"
"""The value head's file in :data:`VALUE_MODEL_DIR`: tensors ``weight`` (1, hidden) and ``bias`` (1,)."""

ValueModelKind = Literal["shared", "separate"]

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


# ------------------------------------------------------------------------------------------------------ names
def is_value_param(name: str) -> bool:
    """True for parameters of the value head or of a separate critic (never in a policy file, never sent to vLLM)."""
    parts = name.split(".")
    return VALUE_HEAD_NAME in parts or CRITIC_NAME in parts


def split_value_params(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``(policy, value)``: a model's state dict without the value function's parameters, and those parameters."""
    policy = {k: v for k, v in state_dict.items() if not is_value_param(k)}
    return policy, {k: v for k, v in state_dict.items() if is_value_param(k)}


def _after(name: str, part: str) -> str:
    """The rest of ``name`` after its component ``part``: ``base_model.model.critic.backbone.x`` -> ``backbone.x``."""
    parts = name.split(".")
    return ".".join(parts[parts.index(part) + 1 :])


def _head_tensors(value_params: dict[str, torch.Tensor], owner: str) -> dict[str, torch.Tensor]:
    """``weight``/``bias`` of the head under ``owner`` (``v_head``, or ``critic`` for the critic's ``v_head``), from
    any naming: ``v_head.weight``, a PEFT prefix, PEFT's ``modules_to_save.default`` copy, old TRL's ``summary``."""
    found = {}
    for name, tensor in value_params.items():
        parts = name.split(".")
        if owner not in parts or "original_module" in parts:  # PEFT keeps the untrained copy as original_module
            continue
        rest = _after(name, owner).split(".")
        if owner == CRITIC_NAME:
            if rest[0] != VALUE_HEAD_NAME:
                continue
            rest = rest[1:]
        if rest[-1] in ("weight", "bias"):
            found[rest[-1]] = tensor
    return found


# ----------------------------------------------------------------------------------------------------- saving
def save_value_model(
    output_dir: str | os.PathLike, value_params: dict[str, torch.Tensor], *, critic_backbone: nn.Module | None = None
) -> Path | None:
    """Write ``output_dir/value_model/`` from the value function's parameters (as :func:`split_value_params` returns
    them, from a plain or PEFT model's state dict); returns the folder, or None when there is nothing to save.

    A separate critic's trunk is written with ``critic_backbone``'s config (class name as ``architectures``), so that
    ``AutoModel.from_pretrained(output_dir/"value_model")`` loads it; large trunks are sharded as transformers shards.
    """
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import save_file

    folder = Path(output_dir) / VALUE_MODEL_DIR
    if folder.exists():
        shutil.rmtree(folder)  # what an earlier save into this folder left (e.g. a critic where this run has a head)
    if not value_params:
        return None
    folder.mkdir(parents=True)
    critic = {k: v for k, v in value_params.items() if CRITIC_NAME in k.split(".")}
    if critic:
        if critic_backbone is None:
            raise ValueError("save_value_model: a separate critic's parameters need critic_backbone (for its config).")
        trunk = {_after(k, CRITIC_NAME).removeprefix("backbone."): v for k, v in critic.items()}
        trunk = {k: v for k, v in trunk.items() if not k.startswith(f"{VALUE_HEAD_NAME}.")}
        config = critic_backbone.config.__class__.from_dict(critic_backbone.config.to_dict())
        config.architectures = [type(critic_backbone).__name__]
        config.save_pretrained(folder)
        save_torch_state_dict(trunk, folder, metadata={"format": "pt"})
        head = _head_tensors(critic, CRITIC_NAME)
    else:
        head = _head_tensors(value_params, VALUE_HEAD_NAME)
    if set(head) != {"weight", "bias"}:
        raise ValueError(f"save_value_model: no complete value head among {sorted(value_params)}.")
    head = {"weight": head["weight"].reshape(1, -1), "bias": head["bias"].reshape(1)}
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.items()},
        str(folder / VALUE_HEAD_FILE),
        metadata={"format": "pt"},
    )
    return folder


# ---------------------------------------------------------------------------------------------------- reading
def weight_files(path: Path, wanted=None) -> list[Path]:
    """The top-level weight files of a model or adapter folder (safetensors or .bin, sharded or not); with
    ``wanted(name)``, only the shards of a sharded checkpoint that hold a wanted name."""
    files: list[Path] = []
    for index_name in WEIGHT_INDEXES:
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


def tensor_names(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    return list(torch.load(file, map_location="cpu", weights_only=True))


def read_tensors(file: Path, wanted=None) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted is None or wanted(k)}  # noqa: SIM118
    state = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if wanted is None or wanted(k)}


def saved_parameter_names(path: str | os.PathLike) -> set[str]:
    """Names of the tensors in a model or adapter folder's top-level weight files (read from the headers where
    possible)."""
    return {name for file in weight_files(Path(path)) for name in tensor_names(file)}


def _legacy_value_params(path: Path) -> dict[str, torch.Tensor]:
    """The value function saved inside the policy's (or adapter's) weight files by earlier versions."""
    return {k: v for file in weight_files(path, is_value_param) for k, v in read_tensors(file, is_value_param).items()}


def saved_value_model(path: str | os.PathLike) -> ValueModelKind | None:
    """Which value function the model folder ``path`` holds -- ``"shared"`` (a value head), ``"separate"`` (a critic)
    or None -- in this layout or an earlier one."""
    path = Path(path)
    folder = path / VALUE_MODEL_DIR
    if (folder / VALUE_HEAD_FILE).is_file():
        return "separate" if (folder / "config.json").is_file() else "shared"
    parts = {p for name in saved_parameter_names(path) for p in name.split(".")} if path.is_dir() else set()
    return "separate" if CRITIC_NAME in parts else "shared" if VALUE_HEAD_NAME in parts else None


def saved_critic_folder(path: str | os.PathLike) -> Path | None:
    """``path/value_model`` when it holds a separate critic (the checkpoint a critic is rebuilt from)."""
    folder = Path(path) / VALUE_MODEL_DIR
    return folder if (folder / VALUE_HEAD_FILE).is_file() and (folder / "config.json").is_file() else None


def read_value_model(path: str | os.PathLike) -> tuple[ValueModelKind, dict[str, torch.Tensor]] | None:
    """``(kind, tensors)`` of the value function saved with the model folder ``path``, named as on the model
    (``v_head.weight``; ``critic.backbone.*`` and ``critic.v_head.*``), or None when it holds none."""
    path = Path(path)
    kind = saved_value_model(path)
    if kind is None:
        return None
    folder = path / VALUE_MODEL_DIR
    if (folder / VALUE_HEAD_FILE).is_file():
        head = read_tensors(folder / VALUE_HEAD_FILE)
        if kind == "shared":
            return kind, {f"{VALUE_HEAD_NAME}.{k}": v for k, v in head.items()}
        trunk = {k: v for file in weight_files(folder) for k, v in read_tensors(file).items()}
        tensors = {f"{CRITIC_NAME}.backbone.{k}": v for k, v in trunk.items()}
        return kind, tensors | {f"{CRITIC_NAME}.{VALUE_HEAD_NAME}.{k}": v for k, v in head.items()}
    legacy = _legacy_value_params(path)
    if kind == "shared":
        head = _head_tensors(legacy, VALUE_HEAD_NAME)
        return kind, {f"{VALUE_HEAD_NAME}.{k}": v for k, v in head.items()}
    return kind, {
        f"{CRITIC_NAME}.{_after(k, CRITIC_NAME)}": v for k, v in legacy.items() if CRITIC_NAME in k.split(".")
    }


def load_value_model(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> ValueModelKind | None:
    """Load the value function saved with the model folder ``path`` into ``model`` -- its value head, or its separate
    critic (trunk and head) -- and return which it was; ``model`` must carry the same kind (a model without either
    gets a value head). Exact: the tensors are copied as saved.

    When the folder holds none: ``strict=True`` raises :class:`MissingValueHeadError`, ``strict=False`` returns None
    and leaves ``model`` as it is. A folder holding the other kind than ``model`` is a ``ValueError``."""
    path = Path(path)
    found = read_value_model(path) if path.is_dir() else None
    if found is None:
        if strict:
            raise MissingValueHeadError(
                f"No value function in {path} (neither {VALUE_MODEL_DIR}/{VALUE_HEAD_FILE} nor `{VALUE_HEAD_NAME}.*` "
                "weights). It looks like a base or SFT model: to start PPO from it, let ReFTTrainer initialise a fresh "
                "head (the default when the checkpoint has none), or call reft_trl.models.add_value_head(model)."
            )
        return None
    kind, tensors = found
    if kind == "shared" and not has_value_head(model):
        if has_critic(model):
            raise ValueError(f"{path} holds a value head; this model has a separate critic (value_model='separate').")
        add_value_head(model)
    if kind == "separate":
        if not has_critic(model):
            raise ValueError(
                f"{path} holds a separate critic; this model has {'a value head' if has_value_head(model) else 'none'} "
                "(value_model='shared'). Load it with value_model='separate'."
            )
        target, prefix = critic_of(model), f"{CRITIC_NAME}."
    else:
        target, prefix = value_head(model), f"{VALUE_HEAD_NAME}."
    state = {k.removeprefix(prefix): v for k, v in tensors.items()}
    expected = target.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise MissingValueHeadError(
            f"The value function saved in {path} does not fit this model's {kind} one: missing {missing[:5]}, "
            f"unexpected {extra[:5]}."
        )
    with torch.no_grad():
        for name, tensor in expected.items():
            saved = state[name].reshape(tensor.shape)
            if hasattr(tensor, "device_mesh"):  # an FSDP2 DTensor: this process's shard of the saved tensor
                from torch.distributed.tensor import distribute_tensor

                saved = distribute_tensor(saved.to(tensor.dtype), tensor.device_mesh, tensor.placements).to_local()
                tensor = tensor.to_local()
            tensor.copy_(saved)
    return kind


# ---------------------------------------------------------------------------------------------------- loading
def attach_value_function(
    model: nn.Module,
    model_path: str,
    *,
    value_model: ValueModelKind = "shared",
    value_model_path: str | None = None,
    init_std: float = 0.0,
    seed: int | None = None,
    **critic_kwargs,
) -> ValueModelKind | None:
    """Give the policy ``model`` (loaded from ``model_path``) its value function and return the kind restored, if any.

    ``"shared"``: a value head (fresh: zeros, or ``N(0, init_std)``); ``"separate"``: a critic started from
    ``value_model_path`` (e.g. a reward model, whose score layer becomes the head), else from the critic saved with
    ``model_path``, else from ``model_path``'s trunk (``critic_kwargs`` go to its ``from_pretrained``). Without
    ``value_model_path``, the value function saved with ``model_path`` (any layout) is restored when it is of the same
    kind. A PEFT model whose head is an adapter module (``modules_to_save``) is refused: its adapter would hold it."""
    from reft_trl.models.critic import attach_critic, build_critic

    if value_model == "separate":
        saved_critic = saved_critic_folder(model_path) if value_model_path is None else None
        source = str(value_model_path or saved_critic or model_path)
        critic = build_critic(source, model, policy_path=model_path, **critic_kwargs)
        attach_critic(model, critic)
        if saved_critic is not None:  # the trunk came from the saved critic already (sharded, under ZeRO-3): the head
            critic.v_head.load_state_dict(read_tensors(saved_critic / VALUE_HEAD_FILE))  # saved in Linear's shapes
            logger.info("Restored the separate critic saved with %s.", model_path)
            return "separate"
    elif not has_value_head(model):
        add_value_head(model, init_std=init_std, seed=seed)
    elif hasattr(getattr(unwrap_causal_lm(model), VALUE_HEAD_NAME), "modules_to_save"):
        raise ValueError(
            "The PEFT model's value head is an adapter module (modules_to_save=['v_head']), so it would be saved in "
            "the adapter, which vLLM then refuses. Load it with reft_trl.models.load_model_with_value_head (which "
            "keeps the head out of the adapter), or wrap the model without 'v_head' in modules_to_save."
        )
    if value_model_path is not None:
        return None
    saved = saved_value_model(model_path) if os.path.isdir(model_path) else None
    if saved == value_model:
        load_value_model(model, model_path)
        logger.info("Restored the %s value function saved with %s.", saved, model_path)
        return saved
    fresh = "zeros" if init_std == 0 or value_model == "separate" else f"N(0, {init_std})"
    held = f" (it holds a {saved} one)" if saved else ""
    logger.info(
        "No %s value function saved with %s%s: starting from a fresh one (%s).", value_model, model_path, held, fresh
    )
    return None


def load_model_with_value_head(
    path: str | os.PathLike, *, require_value_head: bool = True, is_trainable: bool = False, **from_pretrained_kwargs
) -> nn.Module:
    """A causal LM with its value head, from a folder written by ReFTTrainer (full model or PEFT adapter; this layout
    or reft-trl <= 0.1's) or by old TRL's ``AutoModelForCausalLMWithValueHead``. The head is ``model.v_head``.

    ``require_value_head=True`` raises :class:`MissingValueHeadError` when the folder has none; ``False`` gives a
    fresh zero head instead. An adapter folder gives a ``PeftModel`` (``is_trainable`` as PEFT's)."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        peft_config = plain_adapter_config(path)
        base = AutoModelForCausalLM.from_pretrained(peft_config.base_model_name_or_path, **from_pretrained_kwargs)
        model = add_value_head(
            PeftModel.from_pretrained(base, str(path), config=peft_config, is_trainable=is_trainable)
        )
    else:
        model = add_value_head(load_causal_lm(path, **from_pretrained_kwargs))
    load_value_model(model, path, strict=require_value_head)
    return model


def plain_adapter_config(path: str | os.PathLike):
    """The ``PeftConfig`` of the adapter folder ``path`` without the value head or critic in ``modules_to_save``
    (reft-trl <= 0.1 trained the head as an adapter module; it is loaded from the folder by
    :func:`load_value_model` instead)."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(path))
    if getattr(config, "modules_to_save", None):
        config.modules_to_save = without_value_modules(config.modules_to_save)
    return config


def without_value_modules(modules: list[str] | None) -> list[str] | None:
    """A PEFT ``modules_to_save`` list without the value head or critic (None when nothing is left)."""
    return [m for m in modules or () if m not in (VALUE_HEAD_NAME, CRITIC_NAME)] or None


_VALUE_KEY_PATTERNS = (rf"(^|\.){VALUE_HEAD_NAME}\.", rf"(^|\.){CRITIC_NAME}\.")


@functools.cache
def _expecting_value_params(model_class: type) -> type:
    """``model_class`` whose ``from_pretrained`` does not report ``v_head.*`` / ``critic.*`` weights saved in the
    policy's files by reft-trl <= 0.1 as unexpected (it does not load them either). Its models are plain
    ``model_class`` instances."""
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


def causal_lm_class_for(path: str | os.PathLike, *, trust_remote_code: bool = False) -> type | None:
    """The class TRL's ``create_model_from_path`` would load ``path`` with (its config's first architecture), such that
    a value function an earlier version saved in the policy's files is not reported as unexpected; ``None`` when
    transformers has no class of that name (remote code: transformers then reports the keys as usual)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    return _expecting_value_params(model_class) if model_class is not None else None


def load_causal_lm(path: str | os.PathLike, **from_pretrained_kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` for a policy folder, also one an earlier reft-trl wrote with the
    value function inside (not reported as unexpected, and not loaded)."""
    from transformers import AutoModelForCausalLM

    trust = from_pretrained_kwargs.get("trust_remote_code", False)
    model_class = causal_lm_class_for(path, trust_remote_code=trust) or AutoModelForCausalLM
    return model_class.from_pretrained(str(path), **from_pretrained_kwargs)


__all__ = [
    "VALUE_HEAD_FILE",
    "attach_value_function",
    "VALUE_MODEL_DIR",
    "causal_lm_class_for",
    "is_value_param",
    "load_causal_lm",
    "load_model_with_value_head",
    "load_value_model",
    "plain_adapter_config",
    "read_value_model",
    "save_value_model",
    "saved_critic_folder",
    "saved_parameter_names",
    "saved_value_model",
    "split_value_params",
    "read_tensors",
    "weight_files",
    "without_value_modules",
]
