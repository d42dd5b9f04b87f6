"""README's worked examples (custom template, processor, dataset source, family) must run."""

import json
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_the_template_example_is_a_valid_template(tmp_path):
    from auto_round_mllm.data.templates import load_template_file

    (example,) = [b for b in blocks("json") if '"format_user"' in b]
    path = tmp_path / "my_vlm.json"
    path.write_text(example)
    template = load_template_file(path)
    assert template.processor == "hf" and json.loads(example)["extra_encode"] is True
    rendered = template.render(
        [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}]
    )
    assert rendered.startswith("<|system|>You are a careful assistant.<|end|>\n<|user|><|img|>")


def test_the_python_examples_run():
    from auto_round_mllm.data.processors import PROCESSORS
    from auto_round_mllm.data.sources import DATASETS
    from auto_round_mllm.models.family import FAMILIES

    for code in blocks("python"):
        if "register_processor" in code or "register_dataset" in code or "register_family" in code:
            exec(compile(code, "README.md", "exec"), {})  # our own documentation
    assert "my_vlm" in PROCESSORS and "my-manuals" in DATASETS and "my_vlm" in FAMILIES


def test_the_local_lm_eval_task_runs_offline(tmp_path, tiny_llama):
    """README's task YAML, over the data line its comment shows, scored on a model folder."""
    from auto_round_mllm.evaluate.lm_eval_tasks import evaluate_tasks

    (example,) = [b for b in blocks("yaml") if "task: my_choice" in b]
    row = example.split("data_files:", 1)[1].split("# ", 1)[1].split("\n", 1)[0]
    data = tmp_path / "my_choice.jsonl"
    data.write_text(row.strip() + "\n")
    task = tmp_path / "tasks" / "my_choice.yaml"
    task.parent.mkdir()
    task.write_text(example.replace("/data/my_choice.jsonl", str(data)))
    result = evaluate_tasks(tiny_llama, str(task), device="cpu")
    assert result.samples == {"my_choice": 1} and result.metrics["my_choice"]["acc"] in (0.0, 1.0)
