"""Samplers: ``num_samples`` completions for each prompt, from a loaded model (transformers ``generate``) or a vLLM
engine, built for a checkpoint by :func:`build_sampler` (the backend by :func:`resolve_backend`) or on first use
(:class:`LazySampler`, :func:`lazy_checkpoint_sampler`). :func:`reft_trl.evaluation.shards.sample_to_shards` calls
them shard by shard.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from reft_trl.evaluation.args import BACKENDS, SamplingArguments
from reft_trl.evaluation.generation import Prompt, generate_completions, render_prompts, vllm_available

__all__ = [
    "LazySampler",
    "Sampler",
    "TransformersSampler",
    "VLLMSampler",
    "build_sampler",
    "lazy_checkpoint_sampler",
    "load_sampling_tokenizer",
    "resolve_backend",
]


class Sampler(Protocol):
    """What :func:`~reft_trl.evaluation.shards.sample_to_shards` calls: ``num_samples`` completions for each prompt, in the prompts' order."""

    def __call__(self, prompts: list[Prompt], *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]: ...


class TransformersSampler:
    """A :class:`Sampler` on a loaded model with transformers ``generate`` (batched, left-padded); see
    :func:`reft_trl.evaluation.generate_completions`. ``batch_size`` counts prompts (each gives ``num_samples``
    sequences)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 700,
        batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        return generate_completions(
            self.model,
            self.tokenizer,
            prompts,
            num_samples=num_samples,
            do_sample=do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            seed=seed,
            progress=self.progress,
            desc="generating",
        )

    def close(self) -> None:
        """Drop the model and give its accelerator memory back (before training or loading another model)."""
        self.model = None
        _free_memory()


class VLLMSampler:
    """A :class:`Sampler` on a vLLM engine, created on first use and reused for every shard.

    ``top_k=0`` means no top-k filtering (vLLM spells it ``-1``); greedy calls use temperature 0.
    """

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 700,
        gpu_memory_utilization: float = 0.9,
        **llm_kwargs: Any,
    ) -> None:
        if not vllm_available():
            raise ImportError(
                "backend='vllm' needs vLLM: pip install 'reft-trl[vllm]' (or use backend='transformers')."
            )
        self.model_name_or_path, self.tokenizer = model_name_or_path, tokenizer
        self.temperature, self.top_k, self.top_p, self.max_new_tokens = temperature, top_k, top_p, max_new_tokens
        self.llm_kwargs = {"gpu_memory_utilization": gpu_memory_utilization, **llm_kwargs}
        self._llm = None

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        from vllm import LLM, SamplingParams

        if self._llm is None:
            self._llm = LLM(model=self.model_name_or_path, seed=seed, **self.llm_kwargs)
        params = SamplingParams(
            n=num_samples,
            temperature=self.temperature if do_sample else 0.0,
            top_k=self.top_k if (do_sample and self.top_k > 0) else -1,
            top_p=self.top_p if do_sample else 1.0,
            max_tokens=self.max_new_tokens,
            seed=seed,
        )
        outputs = self._llm.generate(render_prompts(self.tokenizer, prompts), params, use_tqdm=False)
        return [[choice.text for choice in out.outputs] for out in outputs]

    def close(self) -> None:
        self._llm = None
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"vllm"`` when vLLM is installed and a GPU is visible, else ``"transformers"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.")
    if backend == "auto":
        import torch

        return "vllm" if vllm_available() and torch.cuda.is_available() else "transformers"
    if backend == "vllm" and not vllm_available():
        raise ImportError("backend='vllm' needs vLLM: pip install 'reft-trl[vllm]' (or use backend='transformers').")
    return backend


def build_sampler(
    model_name_or_path: str,
    tokenizer,
    *,
    backend: str = "auto",
    batch_size: int = 8,
    device: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    vllm_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    **params: Any,
):
    """A :class:`Sampler` for the checkpoint ``model_name_or_path``: vLLM or transformers (see :func:`resolve_backend`).

    ``params`` (``temperature``, ``top_k``, ``top_p``, ``max_new_tokens``) go to the sampler, ``model_kwargs`` to
    ``from_pretrained`` (``dtype``, ``revision``, ...; via :func:`reft_trl.models.load_causal_lm`, so a ReFT
    checkpoint's value head is not reported as unexpected), ``vllm_kwargs`` to ``vllm.LLM``;
    ``device`` defaults to CUDA when available. ``batch_size`` and ``progress`` are the transformers sampler's.
    """
    if resolve_backend(backend) == "vllm":
        return VLLMSampler(model_name_or_path, tokenizer, **params, **dict(vllm_kwargs or {}))
    import torch

    from reft_trl.models.value_model import load_causal_lm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_name_or_path, **dict(model_kwargs or {})).to(device)
    return TransformersSampler(model, tokenizer, batch_size=batch_size, progress=progress, **params)


class LazySampler:
    """A :class:`Sampler` built by ``factory()`` on its first call: a resumed run whose shards are all complete
    never loads the model."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.sampler = None

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        if self.sampler is None:
            self.sampler = self.factory()
        return self.sampler(prompts, num_samples=num_samples, do_sample=do_sample, seed=seed)

    def close(self) -> None:
        if self.sampler is not None and hasattr(self.sampler, "close"):
            self.sampler.close()
        self.sampler = None


def load_sampling_tokenizer(model_name_or_path: str, **kwargs: Any):
    """The checkpoint's tokenizer, ready for batched generation: a pad token (EOS if none) and left padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def lazy_checkpoint_sampler(
    model_name_or_path: str,
    args: SamplingArguments,
    state,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
) -> LazySampler:
    """This process's sampler for a checkpoint with ``args``' settings (``state``: accelerate's ``PartialState``),
    built on first use.

    The tokenizer is loaded now; the model only when a shard needs sampling. vLLM is refused under several
    processes. ``model_kwargs`` go to :func:`build_sampler` (``device`` is the process's device).
    """
    backend = resolve_backend(args.backend)
    if backend == "vllm" and state.num_processes > 1:
        raise ValueError(
            "vLLM sampling runs in a single process: start the recipe with `python` (or use --backend transformers)."
        )
    tokenizer = load_sampling_tokenizer(model_name_or_path, **dict(tokenizer_kwargs or {}))
    params = {k: v for k, v in args.settings(model_name_or_path).items() if k != "model"}  # temperature, ...
    return LazySampler(
        lambda: build_sampler(
            model_name_or_path,
            tokenizer,
            backend=backend,
            **params,
            batch_size=args.sampling_batch_size,
            device=str(state.device),
            model_kwargs=model_kwargs,
            vllm_kwargs={"gpu_memory_utilization": args.vllm_gpu_memory_utilization},
        )
    )
