"""Recipes, accelerate configs and Makefile targets stay runnable.

- Every YAML under recipes/ maps to a stage module (by file name, see hs2trl.runtime.recipes.recipe_stage) and parses with
  that stage's own `parse(["--config", path])` against the pinned TRL; each value it sets reaches the config.
- Every bundled accelerate config loads with accelerate's own config loader (unknown keys are errors there).
- Every Makefile target (except install/test/demo/bench/gpu-check/clean/help) is one `$(HS2) ...` line, and that
  line with `ARGS=--dry-run` exits 0 and prints what it would launch, without installing anything.
"""

from __future__ import annotations

import importlib
import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fixtures import REPO

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))
NOT_EXPERIMENTS = {"install", "test", "test-trl112", "demo", "bench", "gpu-check", "clean", "help"}
# Commands that go through `launch_stage`: their dry run prints the python / accelerate launch line.
LAUNCHED = {"train-rm", "sft", "dpo", "ppo", "rloo", "grpo", "steerlm", "steerlm2", "annotate"}
MAKE = ["make", "--no-print-directory", "-o", "install", "-o", ".make-install.stamp"]  # never (re)install


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ----------------------------------------------------------------------------------------------------- recipes


def _same(parsed, given) -> bool:
    import enum

    if isinstance(parsed, enum.Enum):
        parsed = parsed.value
    if given == "auto" and isinstance(parsed, bool):  # `bf16: auto` is settled for this machine before parsing
        return True
    if isinstance(given, (int, float)) and not isinstance(given, bool) or isinstance(parsed, float):
        try:
            return math.isclose(float(parsed), float(given), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(given, str) and not isinstance(parsed, str):
        return str(parsed) == given
    return parsed == given


def test_there_are_recipes():
    assert any(p.name == "rm.yaml" for p in RECIPES)


@pytest.mark.parametrize("recipe", [pytest.param(p, marks=pytest.mark.ppo) if p.stem == "ppo" else p for p in RECIPES],
                         ids=_rel)
def test_recipe_parses_with_its_stage(recipe: Path):
    from hs2trl.runtime.recipes import recipe_stage

    stage = recipe_stage(str(recipe))
    assert stage, f"{_rel(recipe)}: its name maps to no stage (hs2trl.runtime.recipes.RECIPE_STAGES); a recipe without a stage is a bug"
    try:
        module = importlib.import_module(f"hs2trl.stages.{stage}")
    except ModuleNotFoundError:
        pytest.fail(f"{_rel(recipe)}: stage module hs2trl.stages.{stage} does not exist")
    assert hasattr(module, "parse"), f"hs2trl.stages.{stage} has no parse(argv)"
    parsed = module.parse(["--config", str(recipe)])  # GPU recipes too: bf16 adds use_cpu on a CPU
    given = yaml.safe_load(recipe.read_text()) or {}
    objects = parsed if isinstance(parsed, (tuple, list)) else [parsed]
    for key, value in given.items():
        if key == "env" or value is None or isinstance(value, (list, dict)) or key in ("report_to",):
            continue
        holders = [o for o in objects if hasattr(o, key)]
        assert holders, f"{_rel(recipe)}: key '{key}' reached no config object"
        assert any(_same(getattr(o, key), value) for o in holders), (
            f"{_rel(recipe)}: {key} = {value!r} but the stage sees {[getattr(o, key) for o in holders]!r}")


def test_recipe_stage_mapping():
    from hs2trl.runtime.recipes import recipe_stage

    assert recipe_stage("recipes/x/rm-hh-rlhf.yaml") == "train_rm"
    assert recipe_stage("recipes/x/iterative-dpo.yaml") == "iterative_dpo"
    assert recipe_stage("recipes/x/dpo.yaml") == "dpo"
    assert recipe_stage("recipes/x/steerlm2.yaml") == "steerlm2"
    assert recipe_stage("recipes/x/steerlm.yaml") == "steerlm"
    assert recipe_stage("recipes/x/sft-daring-anteater.yaml") == "sft"
    assert recipe_stage("recipes/x/rmx.yaml") is None


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=_rel)
def test_accelerate_config_loads(config: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))  # accelerate's own loader: unknown keys raise
    data = yaml.safe_load(config.read_text())
    assert config.read_text().startswith("#"), "the first line is the config's description (hs2 recipes shows it)"
    for key in ("compute_environment", "distributed_type", "num_machines", "num_processes", "mixed_precision"):
        assert key in data, f"{config.name}: missing {key}"
    if data["distributed_type"] == "DEEPSPEED":
        assert loaded.deepspeed_config.get("zero_stage") in (2, 3)
    if data["distributed_type"] == "FSDP":
        assert loaded.fsdp_config


# ---------------------------------------------------------------------------------------------- Makefile targets


def makefile_targets() -> list[str]:
    """Targets defined in Makefile and make/*.mk (`name:` at the start of a line, not `name :=`)."""
    targets = []
    for path in [REPO / "Makefile", *sorted((REPO / "make").glob("*.mk"))]:
        for line in path.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?![:=])", line)
            if m and not m.group(1).startswith(".") and "$" not in m.group(1) and m.group(1) not in NOT_EXPERIMENTS:
                if m.group(1) not in targets and not m.group(1).endswith(".stamp"):
                    targets.append(m.group(1))
    return targets


TARGETS = makefile_targets()


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, tuple[str, subprocess.CompletedProcess]]:
    """target -> (the line make would run, its result). `make -n` gives each target's command with HS2 as a marker;
    the commands then run through the real entry point (forked from one process, see cli_batch)."""
    lines = {}
    for target in TARGETS:
        proc = subprocess.run([*MAKE, "-n", target, "ARGS=--dry-run", "HS2=HS2"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"make -n {target}: {proc.stderr}"
        lines[target] = [x for x in proc.stdout.splitlines() if x.strip()]
    runnable = {t: ls[0] for t, ls in lines.items() if len(ls) == 1 and ls[0].startswith("HS2 ")}
    results = run_cli_batch([shlex.split(line)[1:] for line in runnable.values()])
    out = {t: (" | ".join(ls), None) for t, ls in lines.items()}
    out.update({t: (line, r) for (t, line), r in zip(runnable.items(), results)})
    return out


def test_there_are_makefile_targets():
    assert "rm-demo" in TARGETS and "rm-llama3-70b" in TARGETS


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_makefile_target_dry_run(target, dry_runs):
    line, proc = dry_runs[target]
    assert proc is not None, f"make {target}: its recipe must be a single `$(HS2) ...` line (got: {line})"
    context = f"{line}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    command = shlex.split(line)[1]
    from hs2trl.trainers.trl_internals import has_ppo_trainer

    if command == "ppo" and not has_ppo_trainer():  # TRL >= 1.13: one line naming the [ppo] extra, before anything
        assert proc.returncode == 2 and "hs2trl[ppo]" in proc.stderr and "Traceback" not in proc.stderr, context
        return
    assert proc.returncode == 0, context
    assert "Traceback" not in proc.stderr, context
    if command in LAUNCHED:
        assert re.search(r"-m (hs2trl\.stages\.\w+|hs2trl\.accelerate_launch)", proc.stdout), context
    else:
        assert proc.stdout.strip(), f"{line}: a dry run must say what it would do\n{context}"


@pytest.mark.slow
def test_make_itself_runs_a_target_dry():
    """The real chain once: make -> $(HS2) -> hs2 --dry-run, no install step, the launch line printed."""
    proc = subprocess.run([*MAKE, "rm-demo", "ARGS=--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-m hs2trl.stages.train_rm --config" in proc.stdout
    assert "pip install" not in proc.stdout
