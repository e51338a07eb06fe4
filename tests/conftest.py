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


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data/goldens folder is expected beside the repository")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real GSM8K jsonl and the ReFT authors' SVAMP/MathQA JSON files."""
    return _need(SHARED / "data")


@pytest.fixture(scope="session")
def goldens() -> Path:
    """``../shared/goldens``: reference values produced by the authors' implementation."""
    return _need(SHARED / "goldens")


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
