"""Shared test fixtures. Nothing here downloads: the hub is switched off for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REFT_TRL_SHARED", REPO_ROOT.parent / "shared"))
GOLDENS = Path(__file__).resolve().parent / "goldens"
GOLDEN_FILES = ("ppo_math_dev.json", "reward_real_data_dev.json", "majority_vote_dev.json", "verl_algos_dev.json")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real GSM8K jsonl and the ReFT authors' SVAMP/MathQA JSON files (large, not in the repo:
    the tests that read them skip with this message when the folder is absent)."""
    path = SHARED / "data"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder is expected beside the repository")
    return path


@pytest.fixture(scope="session")
def goldens() -> Path:
    """``tests/goldens``: reference values produced by the authors' implementation (see its README). Part of the
    repository, so a missing file fails the tests that need it."""
    missing = [name for name in GOLDEN_FILES if not (GOLDENS / name).is_file()]
    if missing:
        pytest.fail(f"reference values missing from {GOLDENS}: {missing} (copy them from shared/goldens)")
    return GOLDENS


# ------------------------------------------------------------------------------------------ tiny trainer runs
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny Llama + char tokenizer (with a chat template) saved to disk: TRL reloads the reference model from the
    policy's path, so trainers need a checkpoint rather than an in-memory model."""
    from reft_trl.models.tiny import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny-base")
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tiny_llama(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def cpu_trainer_settings(output_dir, **overrides) -> dict:
    """Keyword arguments shared by every tiny trainer run in the tests (ReFT, Online-ST, the 2-process script): CPU,
    fp32, 2 steps of 4 prompts per process, logging every step, no checkpoints, no reporting backends."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def load_recipe():
    """``load_recipe("evaluate")`` imports ``recipes/evaluate.py`` as a module (recipes import their ``_common``)."""
    import importlib.util
    import sys

    recipes = REPO_ROOT / "recipes"
    if str(recipes) not in sys.path:
        sys.path.insert(0, str(recipes))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", recipes / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load


# ------------------------------------------------------------------------------------- deployable model folders
def assert_deployable(folder, *, value_model: str | None = None, base_model: str | None = None):
    """What every model folder a run writes must be: loadable wherever a causal LM (or LoRA adapter) loads.

    * vLLM's view (``reft_trl.models.serving``, emulating vLLM 0.34's file selection and strict name checks): the
      top-level weight files hold exactly the architecture's parameters, or an adapter holds only LoRA weights;
    * transformers' view: ``from_pretrained(..., output_loading_info=True)`` reports nothing missing, unexpected or
      mismatched (an adapter: loaded on ``base_model`` and merged, it gives the base model's own parameter names);
    * the value function is exactly ``value_model`` (``"shared"``, ``"separate"`` or None), kept in ``value_model/``.

    Returns the loaded model (merged, for an adapter)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from reft_trl.models.serving import adapter_problems, servable_problems
    from reft_trl.models.value_model import VALUE_MODEL_DIR, saved_value_model

    folder = Path(folder)
    assert saved_value_model(folder) == value_model, f"{folder}: value function {saved_value_model(folder)!r}"
    assert (folder / VALUE_MODEL_DIR).is_dir() == (value_model is not None)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        assert adapter_problems(folder) == []
        base = AutoModelForCausalLM.from_pretrained(base_model)
        names = set(base.state_dict())
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        assert set(merged.state_dict()) == names and type(merged) is type(base)
        return merged
    assert servable_problems(folder) == []
    import json

    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    auto = AutoModelForSequenceClassification if architecture.endswith("ForSequenceClassification") else None
    model, info = (auto or AutoModelForCausalLM).from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == architecture
    assert {k: v for k, v in info.items() if v} == {}, f"{folder}: loading report {info}"
    return model
