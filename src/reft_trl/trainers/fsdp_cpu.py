"""FSDP2 on CPU processes over gloo: what accelerate does not set up, so that the sharded path runs without GPUs.

``accelerate launch --config_file recipes/accelerate/fsdp2_cpu.yaml`` starts 2 processes with ``ACCELERATE_USE_FSDP``
set, but on a machine without GPUs accelerate (1.15) never reaches its FSDP mode: with ``use_cpu: false`` each
process finds no device backend and reports ``DistributedType.NO`` although torch.distributed is initialised (each
process then trains alone and gathers nothing: transformers warns "parallel_mode != ParallelMode.DISTRIBUTED" and
rank 1 fails at its first rollout), and with ``use_cpu: true`` it reports ``MULTI_CPU``, a type its FSDP switch does
not include, and trains unsharded DDP. torch's own ``fully_shard`` works on CPU over gloo (parameters become DTensors
whose local shards are 1/world of each tensor), so the one missing piece is the accelerate state:
:func:`set_up_cpu_fsdp_state` initialises it as for CPU DDP (gloo, ``cpu`` device) and marks it as a multi-device
run, which sends accelerate's ``AcceleratorState`` down its FSDP branch; accelerate's own FSDP2 code then wraps,
shards, gathers and checkpoints the model as it does on GPUs. :class:`~reft_trl.trainers.rollout_config.RolloutConfig`
calls it when :func:`cpu_fsdp_launch` says the process was launched for FSDP on a machine without GPUs, and tells
transformers to keep that state (``accelerator_config.use_configured_state``).

FSDP version 1 is not set up this way (its ``FullyShardedDataParallel`` wrapper wants a GPU ``device_id``): such a
launch is refused with the reason.
"""

from __future__ import annotations

import os

import torch


def fsdp_launch() -> bool:
    """True when accelerate's launcher (or the environment) asked this process for FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def cpu_fsdp_launch() -> bool:
    """True for a process of a multi-process FSDP launch on a machine without CUDA devices."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return fsdp_launch() and world > 1 and "LOCAL_RANK" in os.environ and not torch.cuda.is_available()


def set_up_cpu_fsdp_state(backend: str | None = "gloo") -> None:
    """(Re)initialise accelerate's process state for FSDP2 on CPU processes (see the module docstring), as transformers
    resets it for every ``TrainingArguments``; the process group, once initialised, is kept."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ValueError(
            f"FSDP version {version} on CPU processes is not supported: accelerate has no FSDP mode without GPUs, and "
            "reft-trl sets one up only for FSDP2 (torch's fully_shard over gloo). Use fsdp_version: 2 "
            "(recipes/accelerate/fsdp2_cpu.yaml)."
        )
    AcceleratorState._reset_state(reset_partial_state=True)
    partial = PartialState(cpu=True, backend=backend or "gloo")  # gloo process group, device cpu: MULTI_CPU
    # AcceleratorState turns a multi-device state into FSDP when ACCELERATE_USE_FSDP is set; MULTI_CPU is not in
    # its list. The device stays the CPU.
    partial.distributed_type = DistributedType.MULTI_GPU


def keep_configured_state(accelerator_config):
    """``accelerator_config`` (None, a dict, a JSON file's path or an ``AcceleratorConfig``) with
    ``use_configured_state`` on, so that transformers uses the state :func:`set_up_cpu_fsdp_state` made instead of
    resetting it."""
    if accelerator_config is None:
        return {"use_configured_state": True}
    if isinstance(accelerator_config, str):
        import json

        with open(accelerator_config, encoding="utf-8") as f:
            accelerator_config = json.load(f)
    if isinstance(accelerator_config, dict):
        return {**accelerator_config, "use_configured_state": True}
    accelerator_config.use_configured_state = True
    return accelerator_config


__all__ = ["cpu_fsdp_launch", "fsdp_launch", "keep_configured_state", "set_up_cpu_fsdp_state"]
