"""Bad input through the real CLI: each mistake is one line `hs2: error: ...` naming the file, the row and the field
(or the key), exit status 2, and no traceback.

The table is the test: add a row per (command, mistake). `{name}` placeholders are filled from the `inputs` fixture
(data files with one mistake each, models, folders). A row whose command is not registered in `hs2` yet is skipped.
All rows run once in a module fixture (forked from one process that imported hs2trl: see cli_batch.py); each row
is then its own test case, and one test checks that separate `hs2` processes give the same answers.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hs2trl.trl_internals import has_ppo_trainer, trl_version
from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fixtures import helpsteer_rows, run_hs2, write_jsonl


@dataclass
class Case:
    id: str
    args: list[str]  # hs2 arguments, with {placeholders}
    expect: list[str]  # substrings of the last stderr line (file, row, field/key)
    needs: tuple[str, ...] = field(default=())  # `hs2` commands that must exist
    known_bug: str | None = None  # strict xfail until fixed (then this row fails as XPASS: delete the note)


TRAIN = ["train-rm", "--model", "{tiny_lm}", "--output-dir", "{tmp}/out-rm", "--max_steps", "1"]

CASES = [
    # --- hs2 train-rm: data rows (HelpSteer2 format)
    Case("train-rm/malformed-json", [*TRAIN, "--dataset", "{malformed_json}"],
         ["malformed_json.jsonl", "row 4", "malformed JSON"]),
    Case("train-rm/missing-column", [*TRAIN, "--dataset", "{missing_response}"],
         ["missing_response.jsonl", "row 3", "'response'", "missing"]),
    Case("train-rm/wrong-type", [*TRAIN, "--dataset", "{helpfulness_text}"],
         ["helpfulness_text.jsonl", "row 3", "'helpfulness'", "'high'"]),
    Case("train-rm/score-above-4", [*TRAIN, "--dataset", "{score_5}"],
         ["score_5.jsonl", "row 3", "'correctness'", "0-4"]),
    Case("train-rm/score-negative", [*TRAIN, "--dataset", "{score_negative}"],
         ["score_negative.jsonl", "row 5", "'verbosity'", "0-4"]),
    Case("train-rm/score-nan", [*TRAIN, "--dataset", "{score_nan}"],
         ["score_nan.jsonl", "row 3", "'coherence'", "nan"]),
    Case("train-rm/empty-prompt", [*TRAIN, "--dataset", "{empty_prompt}"],
         ["empty_prompt.jsonl", "row 3", "'prompt'", "empty"]),
    Case("train-rm/empty-response", [*TRAIN, "--dataset", "{empty_response}"],
         ["empty_response.jsonl", "row 3", "'response'", "empty"]),
    Case("train-rm/not-an-object", [*TRAIN, "--dataset", "{json_list_row}"],
         ["json_list_row.jsonl", "row 2", "JSON object"]),
    Case("train-rm/no-such-file", [*TRAIN, "--dataset", "{tmp}/absent.jsonl"], ["absent.jsonl", "no such file"]),
    # --- hs2 train-rm: recipe and options
    Case("train-rm/unknown-recipe-key", [*TRAIN, "--dataset", "{good}", "--config", "{bad_key_recipe}"],
         ["bad_key.yaml", "unknown key", "'foo'"]),
    Case("train-rm/misspelt-recipe-key", [*TRAIN, "--dataset", "{good}", "--config", "{typo_recipe}"],
         ["typo.yaml", "'learning_rat'", "did you mean 'learning_rate'"]),
    Case("train-rm/recipe-not-yaml", [*TRAIN, "--dataset", "{good}", "--config", "{broken_recipe}"],
         ["broken.yaml", "line", "YAML"]),
    Case("train-rm/no-such-recipe", [*TRAIN, "--dataset", "{good}", "--config", "{tmp}/nope.yaml"],
         ["nope.yaml", "no such"]),
    Case("train-rm/unknown-option", [*TRAIN, "--dataset", "{good}", "--bogus_option", "1"],
         ["unknown option", "--bogus_option"]),
    Case("train-rm/bad-option-value", [*TRAIN, "--dataset", "{good}", "--max_steps", "many"], ["max_steps", "'many'"]),
    Case("train-rm/bad-truncation-mode", [*TRAIN, "--dataset", "{good}", "--truncation_mode", "middle"],
         ["truncation_mode", "'middle'"]),
    # --- models
    Case("train-rm/model-not-a-model", [*TRAIN, "--dataset", "{good}", "--model", "{not_a_model}"],
         ["not_a_model", "model_name_or_path", "not a model folder"]),
    Case("train-rm/model-run-not-finished", [*TRAIN, "--dataset", "{good}", "--model", "{unfinished_run}"],
         ["unfinished_run", "no final model", "--resume"]),
    Case("annotate/model-not-a-reward-model",
         ["annotate", "--model", "{tiny_lm}", "--dataset", "{good}", "--output", "{tmp}/a.jsonl"],
         ["tiny_lm", "not a reward model"], ("annotate",)),
    Case("annotate/missing-column",
         ["annotate", "--model", "{tiny_rm}", "--dataset", "{missing_response}", "--output", "{tmp}/a.jsonl"],
         ["missing_response.jsonl", "row 3", "'response'"], ("annotate",)),
    Case("export-rm/model-not-a-reward-model",
         ["export-rm", "--model", "{tiny_lm}", "--weights", "goodness", "--output", "{tmp}/exp"],
         ["tiny_lm", "not a reward model"], ("export-rm",)),
    Case("export-rm/bad-weights", ["export-rm", "--model", "{tiny_rm}", "--weights", "1,2", "--output", "{tmp}/exp"],
         ["weights", "2 values"], ("export-rm",)),
    Case("eval-rm/model-not-a-reward-model",
         ["eval-rm", "--model", "{tiny_lm}", "--dataset", "{rewardbench}", "--output-dir", "{tmp}/ev"],
         ["tiny_lm", "not a reward model"], ("eval-rm",)),
    Case("eval-rm/missing-column",
         ["eval-rm", "--model", "{tiny_rm}", "--dataset", "{rewardbench_no_subset}", "--output-dir", "{tmp}/ev"],
         ["rewardbench_no_subset.jsonl", "row 2", "'subset'"], ("eval-rm",)),
    Case("rm-normalize/model-not-a-reward-model", ["rm-normalize", "--model", "{tiny_lm}", "--dataset", "{good}"],
         ["tiny_lm", "not a reward model"], ("rm-normalize",)),
    Case("data-stats/score-above-4", ["data", "stats", "--dataset", "{score_5}", "--no-plot"],
         ["score_5.jsonl", "row 3", "'correctness'"], ("data stats",)),
    Case("steerlm/reward-model-not-a-reward-model",
         ["steerlm", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/sl"],
         ["tiny_lm", "not a reward model"], ("steerlm",)),
    Case("steerlm2/reward-model-not-a-reward-model",
         ["steerlm2", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/sl2"],
         ["tiny_lm", "reward_model", "not a reward model"], ("steerlm2",)),
    # --- HelpSteer2 rows that do not pair up (DPO pairs rows 2k and 2k+1)
    Case("dpo/rows-do-not-pair",
         ["dpo", "--model", "{tiny_lm}", "--dataset", "{unpaired}", "--output-dir", "{tmp}/dpo"],
         ["unpaired.jsonl", "rows 3 and 4", "'prompt'"], ("dpo",)),
    Case("dpo/odd-row-count", ["dpo", "--model", "{tiny_lm}", "--dataset", "{odd_rows}", "--output-dir", "{tmp}/dpo"],
         ["odd_rows.jsonl", "row 15", "partner"], ("dpo",)),
    Case("dpo/unknown-recipe-key",
         ["dpo", "--model", "{tiny_lm}", "--dataset", "{good}", "--config", "{bad_key_recipe}"],
         ["bad_key.yaml", "'foo'"], ("dpo",)),
    Case("sft/empty-response",
         ["sft", "--model", "{tiny_lm}", "--dataset", "{empty_response}", "--output-dir", "{tmp}/sft"],
         ["empty_response.jsonl", "row 3"], ("sft",)),
    Case("data-to-dpo/rows-do-not-pair",
         ["data", "to-dpo", "--dataset", "{unpaired}", "--output", "{tmp}/pairs.jsonl"],
         ["unpaired.jsonl", "rows 3 and 4", "'prompt'"], ("data to-dpo",)),
    Case("data-to-dpo/wrong-type",
         ["data", "to-dpo", "--dataset", "{helpfulness_text}", "--output", "{tmp}/pairs.jsonl"],
         ["helpfulness_text.jsonl", "row 3", "'helpfulness'"], ("data to-dpo",)),
    Case("dpo-iterative/reward-model-not-a-reward-model",
         ["dpo", "--iterative", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/idpo"],
         ["tiny_lm", "not a reward model"], ("dpo",)),
    Case("ppo/reward-model-not-a-reward-model",
         ["ppo", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/ppo"],
         ["tiny_lm", "not a reward model"], ("ppo",)),
    Case("ppo/empty-prompt",
         ["ppo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{empty_prompt}",
          "--output-dir", "{tmp}/ppo"],
         ["empty_prompt.jsonl", "row 3", "'prompt'"], ("ppo",)),
    # --- online RL (hs2 rloo, hs2 grpo): before any model loads
    Case("rloo/reward-model-not-a-reward-model",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/rloo"],
         ["tiny_lm", "not a reward model"], ("rloo",)),
    Case("rloo/weights-count",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/rloo", "--weights", "1,2"],
         ["weights", "2 values", "5 attributes"], ("rloo",)),
    Case("rloo/one-generation",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/rloo", "--num_generations", "1"],
         ["at least 2 generations"], ("rloo",)),
    Case("rloo/no-prompt-column",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{no_prompt}",
          "--output-dir", "{tmp}/rloo"],
         ["no_prompt.jsonl", "row 1", "columns: text"], ("rloo",)),
    Case("rloo/empty-prompt",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{empty_prompt}",
          "--output-dir", "{tmp}/rloo"],
         ["empty_prompt.jsonl", "row 3", "'prompt'", "1 of 16 rows"], ("rloo",)),
    Case("rloo/normalize-without-statistics",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/rloo", "--normalize-reward"],
         ["tiny_rm", "no stored 'goodness' normalisation", "hs2 rm-normalize"], ("rloo",)),
    Case("grpo/reward-model-not-a-reward-model",
         ["grpo", "--model", "{tiny_lm}", "--reward-model", "{tiny_lm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/grpo"],
         ["tiny_lm", "not a reward model"], ("grpo",)),
    Case("grpo/weights-preset-misspelt",
         ["grpo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{good}",
          "--output-dir", "{tmp}/grpo", "--weights", "goodnes", "--per-attribute-rewards"],
         ["'goodnes'", "neither a preset"], ("grpo",)),
    Case("sft/unknown-recipe-key",
         ["sft", "--model", "{tiny_lm}", "--dataset", "{good}", "--config", "{bad_key_recipe}"],
         ["bad_key.yaml", "'foo'"], ("sft",)),
    Case("steerlm/empty-response",
         ["steerlm", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--dataset", "{empty_response}",
          "--output-dir", "{tmp}/sl"],
         ["empty_response.jsonl", "row 3", "'response'"], ("steerlm",)),
    Case("generate/model-not-a-model", ["generate", "--model", "{not_a_model}", "--prompt", "Hi"],
         ["not_a_model", "not a model"], ("generate",)),
    Case("push/not-a-model", ["push", "{not_a_model}", "--hub-model-id", "me/x"],
         ["not_a_model", "not a model folder"], ("push",)),
    Case("push/no-such-folder", ["push", "{tmp}/absent", "--hub-model-id", "me/x"],
         ["absent", "no such folder"], ("push",)),
    # --- outputs that cannot be written: one line naming the path and the reason, before any model is loaded
    Case("annotate/output-under-a-file",
         ["annotate", "--model", "{tiny_rm}", "--dataset", "{good}", "--output", "{a_file}/out.jsonl"],
         ["a_file/out.jsonl", "cannot write", "a_file is a file, not a folder"], ("annotate",)),
    Case("annotate/output-where-nothing-can-be-created",
         ["annotate", "--model", "{tiny_rm}", "--dataset", "{good}", "--output", "/proc/hs2-no-such/out.jsonl"],
         ["/proc/hs2-no-such/out.jsonl", "cannot write"], ("annotate",)),
    Case("train-rm/output-under-a-file", [*TRAIN, "--dataset", "{good}", "--output-dir", "{a_file}/rm"],
         ["a_file/rm", "cannot write", "a_file is a file, not a folder"]),
    Case("export-rm/output-under-a-file",
         ["export-rm", "--model", "{tiny_rm}", "--weights", "goodness", "--output", "{a_file}/exp"],
         ["a_file/exp", "cannot write"], ("export-rm",)),
    Case("eval-rm/output-under-a-file",
         ["eval-rm", "--model", "{tiny_rm}", "--dataset", "{rewardbench}", "--output-dir", "{a_file}/ev"],
         ["a_file/ev", "cannot write"], ("eval-rm",)),
    Case("data-to-dpo/output-under-a-file",
         ["data", "to-dpo", "--dataset", "{good}", "--output", "{a_file}/pairs.jsonl"],
         ["a_file/pairs.jsonl", "cannot write"], ("data to-dpo",)),
    Case("data-stats/plot-under-a-file", ["data", "stats", "--dataset", "{good}", "--plot", "{a_file}/heat.png"],
         ["a_file/heat.png", "cannot write"], ("data stats",)),
    Case("generate/output-under-a-file",
         ["generate", "--model", "{tiny_lm}", "--prompt", "Hi", "--output", "{a_file}/g.jsonl"],
         ["a_file/g.jsonl", "cannot write"], ("generate",)),
    # --- an output another run is writing (a fresh holder record from another machine): refused, naming the holder
    Case("annotate/output-in-use", ["annotate", "--model", "{tiny_rm}", "--dataset", "{good}", "--output", "{locked}"],
         ["locked.jsonl", "in use by `hs2 annotate` (pid 4242 on node-9, since"], ("annotate",)),
    Case("train-rm/output-in-use", [*TRAIN, "--dataset", "{good}", "--output-dir", "{locked}"],
         ["locked.jsonl", "in use by `hs2 annotate`"]),
    # --- a model path that does not exist is not sent to the Hub as an id
    Case("train-rm/no-such-model-folder", [*TRAIN, "--dataset", "{good}", "--model", "/path/that/does/not/exist"],
         ["'/path/that/does/not/exist'", "no such folder, and not a Hub model id"]),
    Case("sft/no-such-model-folder",
         ["sft", "--model", "./no-such-model", "--dataset", "{good}", "--output-dir", "{tmp}/sft"],
         ["'./no-such-model'", "no such folder, and not a Hub model id"], ("sft",)),
    Case("annotate/no-such-model-folder",
         ["annotate", "--model", "{tmp}/absent/rm", "--dataset", "{good}", "--output", "{tmp}/a.jsonl"],
         ["absent/rm", "no such folder, and not a Hub model id"], ("annotate",)),
    Case("export-rm/no-such-model-folder",
         ["export-rm", "--model", "{tmp}/absent/rm", "--weights", "goodness", "--output", "{tmp}/exp"],
         ["absent/rm", "no such folder, and not a Hub model id"], ("export-rm",)),
    Case("eval-rm/no-such-model-folder",
         ["eval-rm", "--model", "{tmp}/absent/rm", "--dataset", "{rewardbench}", "--output-dir", "{tmp}/ev"],
         ["absent/rm", "no such folder, and not a Hub model id"], ("eval-rm",)),
    Case("generate/no-such-model-folder", ["generate", "--model", "{tmp}/absent/lm", "--prompt", "Hi"],
         ["absent/lm", "no such folder, and not a Hub model id"], ("generate",)),
    Case("ppo/no-such-reward-model-folder",
         ["ppo", "--model", "{tiny_lm}", "--reward-model", "{tmp}/absent/rm", "--dataset", "{good}",
          "--output-dir", "{tmp}/ppo"],
         ["absent/rm", "no such folder, and not a Hub model id"], ("ppo",)),
    # --- a dry run parses the recipe and every option as the real run does, and fails the same way
    Case("train-rm/dry-run-misspelt-option", ["train-rm", "--max_stepz", "3", "--dry-run"],
         ["--max_stepz", "did you mean --max_steps"]),
    Case("train-rm/dry-run-bad-option-value", ["train-rm", "--max_steps", "abc", "--dry-run"], ["max_steps", "'abc'"]),
    Case("train-rm/dry-run-unknown-recipe-key", ["train-rm", "--config", "{bad_key_recipe}", "--dry-run"],
         ["bad_key.yaml", "'foo'"]),
    Case("dpo-iterative/dry-run-bad-option-value", ["dpo", "--iterative", "--num_samples", "many", "--dry-run"],
         ["num_samples", "'many'"], ("dpo",)),
    Case("annotate/dry-run-bad-weights",
         ["annotate", "--model", "{tiny_rm}", "--dataset", "{good}", "--output", "{tmp}/a.jsonl",
          "--weights", "goodnes", "--dry-run"],
         ["'goodnes'", "neither a preset"], ("annotate",)),
    Case("export-rm/dry-run-weights-count",
         ["export-rm", "--model", "{tiny_rm}", "--weights", "1,2", "--output", "{tmp}/exp", "--dry-run"],
         ["weights", "2 values"], ("export-rm",)),
    Case("eval-rm/dry-run-bad-weights", ["eval-rm", "--model", "{tiny_rm}", "--weights", "0.5,x", "--dry-run"],
         ["'0.5,x'", "neither a preset"], ("eval-rm",)),
    # --- the RM server and its clients
    Case("serve-rm/not-a-reward-model", ["serve-rm", "--model", "{tiny_lm}"], ["tiny_lm", "not a reward model"],
         ("serve-rm",)),
    Case("serve-rm/bad-device", ["serve-rm", "--model", "{tiny_rm}", "--devices", "cpu,tpu:0"],
         ["--devices", "'tpu:0'"], ("serve-rm",)),
    Case("serve-rm/items-over-queue", ["serve-rm", "--model", "{tiny_rm}", "--max-items", "64", "--max-queue", "8"],
         ["--max-items 64", "--max-queue 8"], ("serve-rm",)),
    Case("annotate/reward-url-not-http",
         ["annotate", "--reward-url", "ftp://rm-node", "--dataset", "{good}", "--output", "{tmp}/r.jsonl"],
         ["--reward-url ftp://rm-node", "http://"], ("annotate",)),
    Case("rloo/reward-model-and-url",
         ["rloo", "--model", "{tiny_lm}", "--reward-model", "{tiny_rm}", "--reward-url", "http://127.0.0.1:9",
          "--dataset", "{good}", "--output-dir", "{tmp}/rloo-both"],
         ["--reward-model and --reward-url both given"], ("rloo",)),
    Case("rm-normalize/dry-run-bad-weights",
         ["rm-normalize", "--model", "{tiny_rm}", "--dataset", "{good}", "--weights", "goodnes", "--dry-run"],
         ["'goodnes'"], ("rm-normalize",)),
]

# Odd input that is not a mistake: each row must succeed (exit 0) and print `expect`.
VALID = [
    Case("data-stats/utf8-bom-and-crlf", ["data", "stats", "--dataset", "{bom}", "--no-plot", "--json"],
         ['"rows": 16']),
    Case("data-stats/utf8-bom-json-list", ["data", "stats", "--dataset", "{bom_json}", "--no-plot", "--json"],
         ['"rows": 16']),
    Case("data-to-dpo/utf8-bom-and-crlf",
         ["data", "to-dpo", "--dataset", "{bom}", "--output", "{tmp}/bom_pairs.jsonl"], ["8 pairs kept"]),
]


def _mutated(change) -> list[dict]:
    rows = copy.deepcopy(helpsteer_rows())
    change(rows)
    return rows


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_lm_dir, tiny_rm_dir) -> dict[str, str]:
    from hs2trl.runtime.locks import lock_files

    d = tmp_path_factory.mktemp("bad_input")

    def data(name: str, change=lambda rows: None) -> str:
        return write_jsonl(d / f"{name}.jsonl", _mutated(change))

    out = {"tmp": str(d), "tiny_lm": tiny_lm_dir, "tiny_rm": tiny_rm_dir, "good": data("good")}
    out["missing_response"] = data("missing_response", lambda r: r[2].pop("response"))
    out["helpfulness_text"] = data("helpfulness_text", lambda r: r[2].update(helpfulness="high"))
    out["score_5"] = data("score_5", lambda r: r[2].update(correctness=5))
    out["score_negative"] = data("score_negative", lambda r: r[4].update(verbosity=-1))
    out["score_nan"] = data("score_nan", lambda r: r[2].update(coherence=math.nan))  # json writes the NaN literal
    out["empty_prompt"] = data("empty_prompt", lambda r: r[2].update(prompt="   "))
    out["empty_response"] = data("empty_response", lambda r: r[2].update(response=""))
    out["unpaired"] = data("unpaired", lambda r: r[3].update(prompt="A different question?"))
    out["odd_rows"] = data("odd_rows", lambda r: r.pop())
    out["no_prompt"] = write_jsonl(d / "no_prompt.jsonl", [{"text": r["prompt"]} for r in helpsteer_rows()])

    lines = [json.dumps(r) for r in helpsteer_rows()]
    (d / "malformed_json.jsonl").write_text("\n".join(lines[:3] + ['{"prompt": "x", "response": '] + lines[3:]) + "\n")
    out["malformed_json"] = str(d / "malformed_json.jsonl")
    (d / "json_list_row.jsonl").write_text("\n".join(lines[:1] + ["[1, 2]"] + lines[1:]) + "\n")
    out["json_list_row"] = str(d / "json_list_row.jsonl")

    rb = [{"prompt": f"Q{i}?", "chosen": "A good answer.", "rejected": "Bad.", "subset": "alpacaeval-easy"}
          for i in range(4)]
    out["rewardbench"] = write_jsonl(d / "rewardbench.jsonl", rb)
    rb[1].pop("subset")
    out["rewardbench_no_subset"] = write_jsonl(d / "rewardbench_no_subset.jsonl", rb)

    (d / "bad_key.yaml").write_text("foo: 1\nlearning_rate: 1.0e-5\n")
    out["bad_key_recipe"] = str(d / "bad_key.yaml")
    (d / "typo.yaml").write_text("learning_rat: 1.0e-5\n")
    out["typo_recipe"] = str(d / "typo.yaml")
    (d / "broken.yaml").write_text("learning_rate: [1.0e-5\nmax_steps: 2\n")
    out["broken_recipe"] = str(d / "broken.yaml")

    # A HelpSteer2 file as a Windows editor saves it (UTF-8 with a byte-order mark, CRLF line ends).
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(line + "\r\n" for line in lines).encode())
    out["bom"] = str(d / "bom.jsonl")
    (d / "bom_json.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(helpsteer_rows()).encode())
    out["bom_json"] = str(d / "bom_json.json")

    (d / "a_file").write_text("a file where a folder is expected\n")
    out["a_file"] = str(d / "a_file")
    out["locked"] = str(d / "locked.jsonl")  # held by a live run on another machine (a fresh holder record)
    lock_files(out["locked"])[1].write_text(json.dumps(
        {"pid": 4242, "host": "node-9", "command": "annotate", "since": "2026-05-01 09:12:03"}))

    (d / "not_a_model").mkdir()
    (d / "not_a_model" / "notes.txt").write_text("not a model\n")
    out["not_a_model"] = str(d / "not_a_model")
    (d / "unfinished_run" / "checkpoint-2").mkdir(parents=True)
    out["unfinished_run"] = str(d / "unfinished_run")
    return out


@pytest.fixture(scope="module")
def commands() -> set[str]:
    """The commands `hs2` has now (`data stats` for sub-commands)."""
    from hs2trl.cli import app
    from hs2trl.cli.app import data_app

    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return names | {f"data {c.name or c.callback.__name__.replace('_', '-')}" for c in data_app.registered_commands}


@pytest.fixture(scope="module")
def results(inputs, commands) -> dict[str, object]:
    """Every runnable row through the real entry point (one forked CLI per row, see cli_batch)."""
    runnable = [c for c in CASES + VALID if all(n in commands for n in c.needs)]
    procs = run_cli_batch([[a.format(**inputs) for a in c.args] for c in runnable])
    return dict(zip([c.id for c in runnable], procs))


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.known_bug))
                                  if c.known_bug else c for c in CASES], ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2(case: Case, commands, results):
    missing = [n for n in case.needs if n not in commands]
    if missing:
        pytest.skip(f"`hs2 {missing[0]}` does not exist yet")
    proc = results[case.id]
    expect = case.expect
    if case.args[0] == "ppo" and not has_ppo_trainer():  # TRL >= 1.13: every `hs2 ppo` stops at the [ppo] line
        expect = ["hs2trl[ppo]", f"TRL {trl_version()}", "hs2 rloo"]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    context = f"\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, context
    assert proc.returncode == 2, context
    assert lines and lines[-1].startswith("hs2: error: "), context
    for part in expect:
        assert part in lines[-1], f"{part!r} not in {lines[-1]!r}"
    assert sum(line.startswith("hs2: error:") for line in lines) == 1, context


@pytest.mark.slow
@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_odd_but_valid_input_is_read(case: Case, results):
    proc = results[case.id]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for part in case.expect:
        assert part in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_batch_driver_matches_separate_processes(inputs, results):
    """The forked driver is the real CLI: separate `hs2` processes give the same status and last line."""
    for case_id in ("train-rm/score-nan", "train-rm/unknown-recipe-key"):
        case = next(c for c in CASES if c.id == case_id)
        proc = run_hs2(*[a.format(**inputs) for a in case.args], timeout=300)
        assert proc.returncode == results[case_id].returncode
        last = lambda p: [x for x in p.stderr.splitlines() if x.strip()][-1]  # noqa: E731
        assert last(proc) == last(results[case_id])


def test_table_names_a_row_for_every_data_mistake():
    """The issue's list, kept honest: each mistake has at least one row."""
    ids = " ".join(c.id for c in CASES)
    for mistake in ("malformed-json", "missing-column", "wrong-type", "score-above-4", "score-nan", "empty-prompt",
                    "empty-response", "rows-do-not-pair", "unknown-recipe-key", "not-a-reward-model",
                    "output-under-a-file", "output-where-nothing-can-be-created", "output-in-use",
                    "no-such-model-folder", "dry-run-misspelt-option", "dry-run-bad-option-value",
                    "dry-run-bad-weights"):
        assert mistake in ids, mistake


# ------------------------------------------------------------------------------------ rows over the length limit


@pytest.mark.parametrize("mode", ["drop", "keep_end"])
def test_over_long_rows_are_counted_never_silent(mode, tokenizer, tiny_lm_dir, capsys):
    """Rows over max_length: the count is printed and kept in `length_report` for both policies; keep_end keeps the
    end of the conversation (the end-of-turn token the reward head reads), drop removes exactly the long rows."""
    from datasets import Dataset

    from hs2trl.data.chat import encode_conversation, end_of_turn_id
    from hs2trl.data.helpsteer2 import regression_examples
    from hs2trl.data.records import Record
    from hs2trl.trainers.regression_config import RegressionRewardConfig
    from hs2trl.trainers.regression_trainer import RegressionRewardTrainer

    rows = helpsteer_rows()
    rows[0]["response"] = "A much longer answer. " * 20
    rows[5]["prompt"] = "A long question? " * 30
    examples = regression_examples([Record("long.jsonl", i + 1, r) for i, r in enumerate(rows)])
    lengths = [len(encode_conversation(tokenizer, e["messages"])) for e in examples]
    limit = 100
    n_long = sum(n > limit for n in lengths)
    assert 0 < n_long < len(rows), lengths
    args = RegressionRewardConfig(output_dir=str(Path(tiny_lm_dir).parent / f"len-{mode}"), max_length=limit,
                                  truncation_mode=mode, report_to=[], bf16=False, use_cpu=True)
    trainer = RegressionRewardTrainer(tiny_lm_dir, args=args, train_dataset=Dataset.from_list(examples),
                                      processing_class=tokenizer)
    printed = capsys.readouterr().out
    assert f"{n_long} of {len(rows)} rows are longer than max_length={limit}" in printed
    assert trainer.length_report["train"] == {"rows": len(rows), "over_max_length": n_long}
    kept = trainer.train_dataset["input_ids"]
    if mode == "drop":
        assert len(kept) == len(rows) - n_long
    else:
        assert len(kept) == len(rows)
        assert max(len(ids) for ids in kept) == limit
        eot = end_of_turn_id(tokenizer)
        assert all(ids[-1] == eot for ids in kept)


@pytest.mark.slow
def test_over_long_preference_rows_are_reported(tmp_path, tiny_lm_dir):
    """chosen/rejected data goes to TRL's stock RewardTrainer, which drops rows over max_length: hs2 must say how
    many (never silently)."""
    rows = [{"prompt": f"Q{i}?", "chosen": "Yes. " * (60 if i < 3 else 2), "rejected": "No."} for i in range(8)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    proc = run_hs2("train-rm", "--model", tiny_lm_dir, "--dataset", data, "--output-dir", str(tmp_path / "bt"),
                   "--max_steps", "1", "--max_length", "48", "--per_device_train_batch_size", "2",
                   "--train_sampling_strategy", "random")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 of 8" in proc.stdout, proc.stdout[-3000:]
