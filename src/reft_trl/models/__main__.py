"""``python -m reft_trl.models export SRC DST`` | ``python -m reft_trl.models check FOLDER [FOLDER ...]``.

``export`` rewrites a model folder of any layout reft-trl reads (an earlier reft-trl's, with the value head inside
``model.safetensors``; TRL <= 0.11's ``v_head.summary.*``) as a plain policy folder plus ``value_model/``;
``check`` says whether vLLM would load each folder (exit status 1 if not)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reft_trl.models", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="rewrite SRC as a plain policy folder + value_model/ at DST")
    exporting.add_argument("src")
    exporting.add_argument("dst")
    checking = commands.add_parser("check", help="would vLLM load these model or LoRA adapter folders?")
    checking.add_argument("folders", nargs="+")
    args = parser.parse_args(argv)

    from reft_trl.models.export import export
    from reft_trl.models.serving import adapter_problems, servable_problems
    from reft_trl.models.value_model import VALUE_MODEL_DIR, saved_value_model

    if args.command == "export":
        dst = export(args.src, args.dst)
        kind = saved_value_model(dst)
        value = f" and its value function ({kind}) in {dst / VALUE_MODEL_DIR}" if kind else " (no value function)"
        print(f"{args.src} -> {dst}: the policy{value}.")
        return 0
    status = 0
    for folder in map(Path, args.folders):
        adapter = (folder / "adapter_config.json").is_file()
        problems = adapter_problems(folder) if adapter else servable_problems(folder)
        status |= bool(problems)
        print(f"{folder}: " + ("\n  ".join(["would NOT load in vLLM:", *problems]) if problems else "OK"))
    return status


if __name__ == "__main__":
    sys.exit(main())
