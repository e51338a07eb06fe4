"""Would vLLM load this folder? The checks vLLM makes on a model or LoRA adapter folder, made on CPU; and what of a
training model reaches vLLM's weight sync.

vLLM and SGLang never run where reft-trl is tested, so what they demand is read from their source (vLLM 0.34.0,
SGLang 0.5.23) and emulated here; ``python -m reft_trl.models check FOLDER`` runs it before you serve a folder.

* **Which files** (vLLM ``DefaultModelLoader._prepare_weights``, ``load_format="auto"``): the *top-level* files of
  the folder matching ``*.safetensors``, else ``*.bin``, else ``*.pt`` (the first pattern that matches wins;
  subfolders are never read). Safetensors are filtered by ``model.safetensors.index.json``'s ``weight_map`` when it
  exists, and a shard the index lists but the folder lacks is an error; ``.bin``/``.pt`` files drop
  ``training_args.bin``, ``optimizer.bin``, ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``. SGLang selects the
  same way.
* **Which names** (``AutoWeightsLoader``, and ``track_weights_loading``'s strict check): a name the architecture
  does not have raises ``ValueError: There is no module or parameter named ...``; a parameter no file provides
  raises ``Following weights were not initialized from checkpoint``. Tied weights count once (``lm_head.weight`` may
  be absent when it is the input embedding); rotary ``inv_freq``/``cos_cached``/``sin_cached`` buffers are dropped.
  vLLM also ignores unexpected ``*.bias`` names; this check does not (transformers would report them).
* **LoRA adapters** (``vllm/lora``): ``adapter_config.json``'s ``modules_to_save`` may only be ``None`` or the
  classification heads ``classifier``/``score``; every tensor of ``adapter_model.safetensors`` must be a LoRA
  weight (``lora_A``/``lora_B``/``lora_embedding_A``/``lora_embedding_B``, or a base layer's weight) or belong to
  such a module, else ``... is unsupported LoRA weight``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from reft_trl.models.value_model import is_value_param, tensor_names

__all__ = [
    "adapter_problems",
    "check_adapter",
    "check_servable",
    "exclude_value_params_from_vllm_sync",
    "servable_problems",
    "vllm_weight_files",
]

_VLLM_SKIPPED_FILES = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
_ROTARY_BUFFERS = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
_LORA_PARTS = {"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_layer"}
_VLLM_MODULES_TO_SAVE = {"classifier", "score"}


def vllm_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files vLLM's default loader reads from ``folder`` (``load_format="auto"``), sorted."""
    folder = Path(folder)
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            break
    else:
        raise FileNotFoundError(f"{folder}: no *.safetensors, *.bin or *.pt file at the top level (vLLM: 'Cannot "
                                "find any model weights').")  # fmt: skip
    if files[0].suffix == ".safetensors":
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            listed = set(json.loads(index.read_text())["weight_map"].values())
            missing = sorted(listed - {p.name for p in files})
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are missing: {missing}.")
            files = [p for p in files if p.name in listed]
    else:
        files = [p for p in files if not p.name.endswith(_VLLM_SKIPPED_FILES)]
    return files


def _names_by_file(files: list[Path]) -> dict[str, Path]:

    return {name: file for file in files for name in tensor_names(file)}


def servable_problems(folder: str | os.PathLike, *, trust_remote_code: bool = False) -> list[str]:
    """What vLLM would refuse in the model folder ``folder``: names in its weight files that the architecture of its
    ``config.json`` (``architectures[0]``, built on the meta device) does not have, and parameters none provides.
    An empty list means the folder loads."""
    import transformers

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        return [f"{folder}/config.json: architectures={config.architectures!r} is not a transformers class."]
    with torch.device("meta"):
        model = model_class(config)
    expected = {k for k in model.state_dict() if not k.endswith(_ROTARY_BUFFERS)}
    aliases = set(getattr(model, "all_tied_weights_keys", None) or {})  # tied copies: saved once
    saved = _names_by_file(vllm_weight_files(folder))
    problems = []
    unexpected = sorted(set(saved) - expected)
    if unexpected:
        files = sorted({saved[k].name for k in unexpected})
        problems.append(
            f"{len(unexpected)} weights that {architecture} does not have, in {files}: {unexpected[:8]} (vLLM: "
            f"'There is no module or parameter named {unexpected[0].split('.')[0]!r} in {architecture}')"
        )
    missing = sorted(expected - set(saved) - aliases)
    if missing:
        problems.append(
            f"{len(missing)} parameters of {architecture} in no weight file: {missing[:8]} (vLLM: 'Following weights "
            "were not initialized from checkpoint')"
        )
    return problems


def adapter_problems(folder: str | os.PathLike) -> list[str]:
    """What vLLM's LoRA loader would refuse in the adapter folder ``folder`` (see the module docstring)."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    problems = []
    modules_to_save = set(config.get("modules_to_save") or ())
    if modules_to_save - _VLLM_MODULES_TO_SAVE:
        problems.append(
            f"{folder}/adapter_config.json: modules_to_save={sorted(modules_to_save)} (vLLM only supports None or "
            "['classifier', 'score'])"
        )
    files = [p for p in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if p.is_file()][:1]
    if not files:
        return [*problems, f"{folder}: no adapter_model.safetensors or adapter_model.bin."]
    allowed = _LORA_PARTS | (modules_to_save & _VLLM_MODULES_TO_SAVE)
    for name in _names_by_file(files):
        if not set(name.split(".")) & allowed:
            problems.append(f"{files[0].name}: {name} is not a LoRA weight (vLLM: 'is unsupported LoRA weight')")
    return problems


def check_servable(folder: str | os.PathLike, **kwargs) -> None:
    """Raise ``ValueError`` listing :func:`servable_problems`, if any."""
    problems = servable_problems(folder, **kwargs)
    if problems:
        raise ValueError(f"{folder} would not load in vLLM:\n  " + "\n  ".join(problems))


def check_adapter(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` listing :func:`adapter_problems`, if any."""
    problems = adapter_problems(folder)
    if problems:
        raise ValueError(f"{folder} would not load as a vLLM LoRA adapter:\n  " + "\n  ".join(problems))


def exclude_value_params_from_vllm_sync(vllm_generation) -> None:
    """Keep ``v_head.*`` (and a separate critic) out of the weights TRL pushes to vLLM, which has no such parameters.

    Wraps TRL's private ``VLLMGeneration._iter_named_params``; fails loudly if a TRL release renamed it. The wrapped
    iterator still walks every parameter, so collective gathers (ZeRO-3) stay in step across processes.
    """
    original = getattr(vllm_generation, "_iter_named_params", None)
    if original is None or not callable(original):
        import trl

        raise RuntimeError(
            f"trl {trl.__version__}: VLLMGeneration._iter_named_params is gone, so reft-trl cannot keep the value "
            "head out of the vLLM weight sync. Use the TRL version listed in reft-trl's requirements."
        )

    def named_params_without_value_head():
        for name, param in original():
            if not is_value_param(name):
                yield name, param

    vllm_generation._iter_named_params = named_params_without_value_head
