"""Export: rewrite a model folder of any layout reft-trl reads as a plain policy folder plus ``value_model/``.

``python -m reft_trl.models export SRC DST``. The layouts: this version's (a copy), reft-trl 0.1's (the value head or
critic inside the policy's weight files, the head in a PEFT adapter's ``modules_to_save``), TRL <= 0.11's
``AutoModelForCausalLMWithValueHead`` (``v_head.summary.*``; for PEFT models alone in ``pytorch_model.bin``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from reft_trl.models.critic import CRITIC_NAME
from reft_trl.models.serving import check_adapter, check_servable
from reft_trl.models.value_model import (
    VALUE_MODEL_DIR,
    WEIGHT_INDEXES,
    is_value_param,
    read_tensors,
    read_value_model,
    save_value_model,
    saved_critic_folder,
    weight_files,
    without_value_modules,
)

TRAINING_STATE = {"trainer_state.json", "training_args.bin", "latest", "zero_to_fp32.py"}
"""Files of a ``checkpoint-N`` that export leaves out besides weights (``*.pt``/``*.pth``: optimizer, scheduler, RNG,
rollout state) and ``reft_*`` files (rollout state, completion marker)."""


def _legacy_critic_backbone(src: Path) -> nn.Module:
    """A meta-device trunk for a critic that reft-trl <= 0.1 saved inside the policy's files (no config of its own):
    the policy's base model, which the critic was started from unless ``value_model_path`` said otherwise."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(src))
    with torch.device("meta"):
        return AutoModel.from_config(config)


def export(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite the model folder ``src`` (any layout :func:`load_value_model` reads: this one, reft-trl <= 0.1's, TRL
    <= 0.11's) as a plain policy folder plus ``value_model/`` at ``dst``, which must not exist.

    The weights are streamed file by file (shards and dtypes kept as they are); the tokenizer, config and generation
    config are copied, the training state of a ``checkpoint-N`` (optimizer, scheduler, RNG, rollout state) is not.
    ``src`` is checked first (it must hold policy weights); ``dst`` is checked after (its top-level weight files hold
    exactly the causal LM's parameters, or only adapter weights, as :mod:`reft_trl.models.serving` checks, and its
    value function reads back equal to ``src``'s) and only then moved into place: a failed export leaves nothing."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; export writes a new folder.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    files = weight_files(src)
    if not files:
        raise ValueError(
            f"{src}: no weight files (model.safetensors, adapter_model.safetensors, ...): not a model folder."
        )
    value = read_value_model(src)
    adapter = (src / "adapter_config.json").is_file()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for item in src.iterdir():
            skip = item.is_dir() or item.name in TRAINING_STATE or item.name.startswith(("rng_state", "reft_"))
            if (
                not skip
                and item.suffix not in (".safetensors", ".bin", ".pt", ".pth")
                and item.name not in WEIGHT_INDEXES
            ):
                shutil.copy2(item, tmp / item.name)
        for index_name in WEIGHT_INDEXES:
            if (src / index_name).is_file():
                index = json.loads((src / index_name).read_text())
                index["weight_map"] = {k: f for k, f in index["weight_map"].items() if not is_value_param(k)}
                (tmp / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for file in files:
            tensors = read_tensors(file, lambda k: not is_value_param(k))
            if not tensors:
                continue  # old TRL's pytorch_model.bin beside a PEFT adapter: the head alone
            if file.suffix == ".safetensors":
                from safetensors.torch import save_file

                save_file(tensors, str(tmp / file.name), metadata={"format": "pt"})
            else:
                torch.save(tensors, tmp / file.name)
        if adapter:
            config = json.loads((src / "adapter_config.json").read_text())
            config["modules_to_save"] = without_value_modules(config.get("modules_to_save"))
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if value is not None:
            kind, tensors = value
            backbone = (
                _legacy_critic_backbone(src) if kind == "separate" and saved_critic_folder(src) is None else None
            )
            if kind == "separate" and backbone is None:
                shutil.copytree(src / VALUE_MODEL_DIR, tmp / VALUE_MODEL_DIR)
            else:
                if backbone is not None:
                    trunk = {k.removeprefix(f"{CRITIC_NAME}.backbone."): v for k, v in tensors.items()}
                    trunk = {k: v for k, v in trunk.items() if not k.startswith(f"{CRITIC_NAME}.")}
                    shapes = {k: tuple(v.shape) for k, v in trunk.items()}
                    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
                    if shapes != expected:
                        differ = sorted(set(shapes.items()) ^ set(expected.items()))
                        raise ValueError(
                            f"{src}: the critic saved inside the policy's files is not the policy's trunk "
                            f"({len(differ)} names or shapes differ, e.g. {differ[0]}); export cannot tell its "
                            "architecture. Load it with the reft-trl version that wrote it and save its critic "
                            "separately."
                        )
                save_value_model(tmp, tensors, critic_backbone=backbone)
        (check_adapter if adapter else check_servable)(tmp)
        exported = read_value_model(tmp)
        if (value is None) != (exported is None) or (
            value is not None
            and (value[0] != exported[0] or any(not torch.equal(t, exported[1][k]) for k, t in value[1].items()))
        ):
            raise RuntimeError(f"export {src} -> {dst}: the value function did not read back as saved.")
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


__all__ = ["export"]
