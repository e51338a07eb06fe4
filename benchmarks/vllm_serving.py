"""GPU check: the model folders ReFTTrainer writes load in vLLM and generate what the trained policy generates.

    python benchmarks/vllm_serving.py [--output_dir outputs/vllm_serving]      # needs a GPU and `pip install vllm`

Builds the embedded task and a tiny Llama (head_dim 64, which every vLLM attention backend supports), trains ReFT for
2 steps with a checkpoint at each step in three settings -- shared value head, separate critic, LoRA -- and then,
for every folder written (checkpoint-1, checkpoint-2, the final save_model folder):

1. ``python -m reft_trl.models check`` (the CPU emulation of vLLM's loader that the test suite uses);
2. ``vllm.LLM(model=folder)`` (LoRA: the base model with ``enable_lora=True`` and a ``LoRARequest`` of the adapter)
   generates greedily for 16 held-out questions; the tokens are compared with transformers' greedy generation from
   the same folder (fp32 on both sides; a mismatch after the first few tokens is kernel noise, a failure to load is
   the bug this script looks for);
3. ``recipes/evaluate.py --backend vllm`` on the final folder of the shared-head run;
4. tool calling through vLLM: 2 ReFT steps with ``use_vllm=True`` (colocate), ``tools=[python_tool()]`` and
   ``max_tool_calling_iterations=2`` on a tiny model with a tool-calling chat template
   (:func:`reft_trl.models.tiny.tool_chat_tokenizer`), conversational questions of the embedded task: TRL's tool loop
   on the vLLM engine, the value head kept out of the weight sync, the tool-result tokens kept out of the update.
   The model is untrained, so it may call no tool: the row reports ``tools/call_frequency`` as measured, and the run
   passes if it trains (the CPU tests check a scripted tool-calling rollout through a mocked vLLM backend).

Prints a table and writes ``benchmarks/results/vllm_serving.json``. Never part of the test suite (no GPU in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = '{"n_train": 64, "n_test_iid": 16, "n_test_ood": 16}'


def run(*argv: str) -> str:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def train(base: Path, task: Path, out: Path, variant: str) -> list[Path]:
    """Two ReFT steps from ``base`` (checkpoint at each); returns the model folders written."""
    import torch
    from peft import LoraConfig

    from reft_trl.data import load_mwp
    from reft_trl.trainers import ReFTConfig, ReFTTrainer

    rows = load_mwp(task / "synthetic_python_sdp.json", dataset="synthetic", cot="python", kind="rl")
    args = ReFTConfig(
        output_dir=str(out), max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=8,
        max_completion_length=32, learning_rate=1e-4, report_to="none", bf16=False, seed=0,
        use_cpu=not torch.cuda.is_available(), value_model="separate" if variant == "separate" else "shared",
    )  # fmt: skip
    peft = LoraConfig(r=8, target_modules=["q_proj", "v_proj"]) if variant == "lora" else None
    trainer = ReFTTrainer(model=str(base), args=args, train_dataset=rows, peft_config=peft)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return [out / "checkpoint-1", out / "checkpoint-2", out / "final"]


def train_with_tools(task: Path, out: Path) -> dict:
    """Two ReFT steps with vLLM generation and the sandbox's python tool (item 4 of the module docstring)."""
    import torch
    from datasets import Dataset

    from reft_trl.data import load_mwp
    from reft_trl.models.tiny import tiny_llama, tool_chat_tokenizer
    from reft_trl.sandbox import python_tool
    from reft_trl.trainers import ReFTConfig, ReFTTrainer

    base = out / "base"
    tok = tool_chat_tokenizer()
    tiny_llama(tok, hidden_size=256, num_attention_heads=4, num_hidden_layers=2, intermediate_size=512,
               max_position_embeddings=4096).save_pretrained(base)  # fmt: skip
    tok.save_pretrained(base)
    rows = load_mwp(task / "synthetic_python_sdp.json", dataset="synthetic", cot="nl", kind="rl")
    chat = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": r["question"]}] for r in rows], "answer": rows["answer"],
         "answer_format": rows["answer_format"], "cot": rows["cot"]}
    )  # fmt: skip
    args = ReFTConfig(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=8, max_completion_length=256,
        learning_rate=1e-4, report_to="none", bf16=False, seed=0, use_vllm=True, vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3, max_tool_calling_iterations=2, save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = ReFTTrainer(model=str(base), args=args, train_dataset=chat, tools=[python_tool()])
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "tools/call_frequency" in entry]
    return {"steps": trainer.state.global_step, "tools/call_frequency": [e["tools/call_frequency"] for e in logs]}


def greedy_transformers(folder: Path, base: Path, prompts: list[str]) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(folder)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.eval().generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    ids = out[:, batch["input_ids"].size(1) :].tolist()
    eos = tokenizer.eos_token_id
    return [seq[: seq.index(eos) + 1] if eos in seq else seq for seq in ids]


def greedy_vllm(folder: Path, base: Path, prompts: list[str]) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=32)
    if (folder / "adapter_config.json").is_file():
        from vllm.lora.request import LoRARequest

        llm = LLM(model=str(base), dtype="float32", enable_lora=True, max_lora_rank=8, gpu_memory_utilization=0.3)
        outputs = llm.generate(prompts, params, lora_request=LoRARequest("reft", 1, str(folder)))
    else:
        llm = LLM(model=str(folder), dtype="float32", gpu_memory_utilization=0.3)
        outputs = llm.generate(prompts, params)
    ids = [list(o.outputs[0].token_ids) for o in outputs]
    del llm
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/vllm_serving")
    cli = parser.parse_args()
    out = Path(cli.output_dir).resolve()
    base, task = out / "base", out / "task"
    run("recipes/tiny_model.py", "--dataset", "synthetic", "--task_config", TASK, "--output_dir", str(base),
        "--task_dir", str(task), "--hidden_size", "256", "--num_attention_heads", "4", "--num_hidden_layers", "2",
        "--intermediate_size", "512")  # fmt: skip
    from reft_trl.data import load_mwp

    prompts = [r["prompt"] for r in load_mwp(task / "synthetic_test_iid_set.json", dataset="synthetic",
                                             cot="python", kind="rl")]  # fmt: skip
    rows = []
    for variant in ("shared", "separate", "lora"):
        for folder in train(base, task, out / variant, variant):
            row = {"variant": variant, "folder": str(folder.relative_to(out))}
            check = subprocess.run([sys.executable, "-m", "reft_trl.models", "check", str(folder)], capture_output=True,
                                   text=True)  # fmt: skip
            row["check"] = "OK" if check.returncode == 0 else check.stdout.strip()
            try:
                start = time.perf_counter()
                served = greedy_vllm(folder, base, prompts)
                row["vllm_load_generate_s"] = round(time.perf_counter() - start, 1)
                reference = greedy_transformers(folder, base, prompts)
                row["identical_completions"] = sum(a == b for a, b in zip(served, reference, strict=True))
                row["completions"] = len(prompts)
            except Exception as err:  # a folder vLLM refuses is the finding: record it, go on with the others
                row["vllm_error"] = f"{type(err).__name__}: {err}"[:500]
            rows.append(row)
    evaluation = out / "eval"
    run("recipes/evaluate.py", "--dataset", "synthetic", "--data_path", str(task), "--cot", "python",
        "--eval_split", "test_iid", "--model_name_or_path", str(out / "shared" / "final"), "--backend", "vllm",
        "--num_samples", "4", "--max_new_tokens", "32", "--output_dir", str(evaluation))  # fmt: skip
    results = json.loads((evaluation / "results.json").read_text())
    try:
        tools = train_with_tools(task, out / "tools")
    except Exception as err:  # the finding: record it
        tools = {"error": f"{type(err).__name__}: {err}"[:500]}
    import torch

    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "folders": rows,
        "evaluate_vllm": results["results"],
        "tools_vllm": tools,
    }
    target = ROOT / "benchmarks" / "results" / "vllm_serving.json"
    target.write_text(json.dumps(report, indent=1))
    print("| run | folder | reft_trl check | vLLM | identical greedy completions |\n|---|---|---|---|---|")
    for r in rows:
        vllm = "loads" if "vllm_error" not in r else r["vllm_error"][:80]
        same = f"{r['identical_completions']}/{r['completions']}" if "completions" in r else "-"
        print(f"| {r['variant']} | {r['folder']} | {r['check'][:40]} | {vllm} | {same} |")
    print("\nrecipes/evaluate.py --backend vllm:", results["results"])
    print("ReFT with tools=[python_tool()] on vLLM:", tools)
    ok = all("vllm_error" not in r and r["check"] == "OK" for r in rows)
    return 0 if ok and tools.get("steps") == 2 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
