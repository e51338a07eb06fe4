"""Model-state memory per GPU under each engine: parameters + gradients + optimizer state (+ the frozen reference).

The accounting of the ZeRO paper (Rajbhandari et al. 2020, section 3) for mixed-precision AdamW, per trained
parameter: a 16-bit working copy (2 bytes), its 16-bit gradient (2) and the optimizer's fp32 master copy, first
and second moments (4 + 4 + 4 = 12), 16 bytes in all. What each engine keeps on every GPU of ``num_gpus``:

=========  ================  ==================  ================  ===================
engine     parameters        gradients           optimizer state   frozen reference
=========  ================  ==================  ================  ===================
ddp        2 (all)           2 (all)             12 (all)          2 (all)
zero2      2 (all)           2 / N               12 / N            2 (all)
zero3      2 / N             2 / N               12 / N            2 / N
fsdp2      4 / N (fp32)      4 / N (fp32)        8 / N (m, v)      2 / N
=========  ================  ==================  ================  ===================

FSDP2 with a bf16 ``MixedPrecisionPolicy`` keeps the sharded parameters in fp32 (they are the master copy; the
16-bit copy exists only while a layer is gathered) and their gradients in fp32: 16 bytes per parameter again, split
differently. The reference model (``beta > 0``) is a frozen 16-bit copy of the policy: TRL shards it with the policy
under ZeRO-3 and FSDP, and keeps it whole under DDP and ZeRO-2. Not counted: activations, the KV cache of
generation, the transient gathered layers of ZeRO-3/FSDP2, communication buffers and fragmentation -- leave room
for them.

What is trained: the policy and the value function -- a ``Linear(hidden, 1)`` head on the shared trunk
(``value_model="shared"``, ``hidden + 1`` parameters) or a separate critic with its own trunk
(``value_model="separate"``, ``critic_params`` parameters, by default as many as the policy's).
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("ddp", "zero2", "zero3", "fsdp2")
"""The engines :func:`memory_per_gpu` knows, from least to most sharded (accelerate configs: multi-GPU, zero2.yaml,
zero3.yaml, fsdp2.yaml)."""

# bytes per trained parameter: (parameters, gradients, optimizer state), and whether each is sharded over the GPUs
_LAYOUT = {
    "ddp": ((2, False), (2, False), (12, False)),
    "zero2": ((2, False), (2, True), (12, True)),
    "zero3": ((2, True), (2, True), (12, True)),
    "fsdp2": ((4, True), (4, True), (8, True)),
}
_REFERENCE_SHARDED = {"ddp": False, "zero2": False, "zero3": True, "fsdp2": True}
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of each part of the model state."""

    parameters: float
    gradients: float
    optimizer: float
    reference: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.reference


def trained_params(policy_params: int, *, value_model: str, hidden_size: int, critic_params: int | None = None) -> int:
    """Parameters the optimizer trains: the policy plus the value head (``hidden_size + 1``) or a separate critic
    (``critic_params``, default ``policy_params``)."""
    if value_model == "shared":
        return policy_params + hidden_size + 1
    if value_model == "separate":
        return policy_params + (policy_params if critic_params is None else critic_params)
    raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}.")


def memory_per_gpu(
    policy_params: int,
    *,
    engine: str,
    num_gpus: int,
    value_model: str = "shared",
    hidden_size: int = 0,
    critic_params: int | None = None,
    reference: bool = True,
) -> MemoryEstimate:
    """Model-state bytes on each of ``num_gpus`` GPUs (see the module docstring for the accounting)."""
    if engine not in _LAYOUT:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if num_gpus < 1 or policy_params < 0:
        raise ValueError(f"num_gpus must be >= 1 and policy_params >= 0, got {num_gpus} and {policy_params}.")
    trained = trained_params(
        policy_params, value_model=value_model, hidden_size=hidden_size, critic_params=critic_params
    )
    parts = [trained * size / (num_gpus if sharded else 1) for size, sharded in _LAYOUT[engine]]
    ref = 2 * policy_params / (num_gpus if _REFERENCE_SHARDED[engine] else 1) if reference else 0.0
    return MemoryEstimate(*parts, reference=ref)


# Published sizes (parameters, hidden size) of the models the README's table is about.
TABLE_MODELS = {
    "Qwen2.5-7B": (7_615_616_512, 3584),
    "Qwen2.5-14B": (14_770_033_664, 5120),
    "Qwen2.5-32B": (32_763_876_352, 5120),
    "Llama-3.1-70B": (70_553_706_496, 8192),
}


def memory_table(num_gpus: int = 8, models: dict[str, tuple[int, int]] | None = None) -> str:
    """The README's table: GiB of model state per GPU for each model, engine and value function, on ``num_gpus``
    GPUs, with the reference model (a separate critic as large as the policy)."""
    models = TABLE_MODELS if models is None else models
    header = "| policy | value function | " + " | ".join(ENGINES) + " |"
    lines = [header, "|" + "---|" * (len(ENGINES) + 2)]
    for name, (params, hidden) in models.items():
        for value_model, label in (("shared", "shared head"), ("separate", "separate critic")):
            cells = [
                f"{memory_per_gpu(params, engine=e, num_gpus=num_gpus, value_model=value_model, hidden_size=hidden).total / GIB:.0f}"
                for e in ENGINES
            ]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["ENGINES", "GIB", "TABLE_MODELS", "MemoryEstimate", "memory_per_gpu", "memory_table", "trained_params"]
