"""TruthfulQA MC2 through lm-evaluation-harness (`lm_eval`, task `truthfulqa_mc2`), as the Open LLM Leaderboard (and
Table 4) computes it: the harness's own task definition, prompt and scoring, no chat template, the harness loading the
model itself; the figure is the `acc` the harness reports.

Per question: the context is the task's 6 fixed question/answer pairs and `Q: {question}\\nA:`; each choice is scored
by its summed log-probability; MC2 = the probability mass of the true choices over all choices; the score is the
mean over the 817 questions (0-1), with the harness's standard error.

Data: the harness reads the Hub dataset itself (`truthfulqa/truthful_qa`, `multiple_choice`); with a local file
(`--data-dir`: truthfulqa/truthful_qa_mc_validation.jsonl, the Hub split's rows) the registered task is used with
only its data source replaced.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from hs2trl.data.records import write_jsonl
from hs2trl.evaluation.sources import local_file
from hs2trl.runtime.errors import Hs2Error, first_line

NAME = "truthfulqa-mc2"
TASK = "truthfulqa_mc2"


def task_config(data_file: str | None):
    """The registered `truthfulqa_mc2` task, or the same task reading `data_file` (a config dict for lm_eval)."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    if data_file is None:
        return TASK
    config = load_yaml(os.path.join(os.path.dirname(lm_eval.tasks.__file__), "truthfulqa", f"{TASK}.yaml"))
    config.pop("tag", None)  # the harness's group tag: this one task only
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {"validation": str(Path(data_file).resolve())}})
    return config


def import_lm_eval():
    """`lm_eval`, or one line saying how to install it."""
    try:
        import lm_eval
    except ImportError as err:
        raise Hs2Error(f"truthfulqa-mc2 needs lm-evaluation-harness ({err}): pip install 'hs2trl[eval]'") from None
    return lm_eval


def evaluate(model_path: str, folder: Path, data_dir: str | None, limit: int | None, batch_size: int,
             dtype: str, device: str) -> dict:
    """Run the harness on `model_path` (a local folder); write per-question scores and the result; reuse a result
    made with the same settings."""
    lm_eval = import_lm_eval()
    from lm_eval.tasks import TaskManager

    data = local_file("truthfulqa/mc", data_dir)
    settings = {"limit": limit, "dtype": dtype, "data": str(data) if data else "truthfulqa/truthful_qa (Hub)"}
    result_file = folder / "result.json"
    if result_file.is_file():
        previous = json.loads(result_file.read_text(encoding="utf-8"))
        if previous.get("settings") == settings:
            return previous["result"]
    folder.mkdir(parents=True, exist_ok=True)
    tasks = TaskManager(include_defaults=data is None)  # indexing every bundled task takes seconds
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": model_path, "dtype": dtype, **_parallel()},
            tasks=[task_config(str(data) if data else None)], task_manager=tasks, limit=limit,
            batch_size=batch_size, device=device, log_samples=True, verbosity="ERROR")
    except (OSError, ValueError, ConnectionError) as err:
        raise Hs2Error(f"truthfulqa-mc2: lm-evaluation-harness failed ({first_line(err)})"
                       + ("" if data else "; offline, pass --data-dir with truthfulqa/truthful_qa_mc_validation.jsonl")
                       ) from None
    metrics = out["results"][TASK]
    se = metrics.get("acc_stderr,none")
    samples = out.get("samples", {}).get(TASK, [])
    per_question = ({"question_id": s["doc_id"], "question": s["doc"]["question"], "mc2": float(s["acc"])}
                    for s in samples)  # the harness's own mc2 score of each question
    write_jsonl(folder / "judgments.jsonl", per_question)
    result = {"score": float(metrics["acc,none"]), "n": int(out["n-samples"][TASK]["effective"]),
              "interval": {"kind": "se", "value": float(se)} if isinstance(se, (int, float)) else None,
              "judge": None, "data_source": settings["data"],
              "harness": f"lm-evaluation-harness {getattr(lm_eval, '__version__', '')}".strip()}
    result_file.write_text(json.dumps({"settings": settings, "result": result}, indent=2) + "\n", encoding="utf-8")
    return result


def _parallel() -> dict:
    """Several GPUs and one process: spread the model over them (a 70B model needs it)."""
    import torch

    return {"parallelize": True} if torch.cuda.device_count() > 1 else {}
