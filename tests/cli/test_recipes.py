"""Recipes, accelerate configs and Makefile targets stay runnable.

- Every YAML under recipes/ maps to a stage module (by file name, see hs2trl.runtime.recipes.recipe_stage) and parses
  with that stage's own `parse(["--config", path])` against the pinned TRL; each value it sets reaches the config.
- Every bundled accelerate config loads with accelerate's own config loader (unknown keys are errors there).
- Every Makefile target (except install/test/lint/demo/bench/gpu-check/clean/help) is one `$(HS2) ...` line, and that
  line with `ARGS=--dry-run` exits 0 and prints what it would launch, without installing anything.
- A paper recipe carries its launch (`launch:`): its header's global batch and hardware agree with it, its make target
  names no launch of its own and prints the same accelerate command as when it did, and a bad `launch:` is one line.
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
NOT_EXPERIMENTS = {"install", "test", "test-trl112", "demo", "bench", "gpu-check", "clean", "help", "lint",
                   "rm-demo-preference"}  # a chain of targets, each of them one `$(HS2)` line (checked in test_chains)
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
    assert stage, (f"{_rel(recipe)}: its name maps to no stage (hs2trl.runtime.recipes.RECIPE_STAGES); "
                   "a recipe without a stage is a bug")
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
    out.update({t: (line, r) for (t, line), r in zip(runnable.items(), results, strict=True)})
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
    from hs2trl.trl_internals import has_ppo_trainer

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


# --------------------------------------------------------------------------- a recipe carries its launch (`launch:`)
#
# A paper recipe says how it is launched (`launch:`: accelerate config, processes of all machines, machines), and its
# header states the global batch once, as `# Global batch: N <unit> = ...`. The make target names only the recipe.


def _recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _header(path: Path) -> str:
    """The recipe's leading comment lines."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


LAUNCH_RECIPES = [p for p in RECIPES if "launch" in _recipe(p)]
# Every recipe that states a global batch: the launch: ones, and iterative DPO (its rounds' round_num_processes).
BATCH_RECIPES = [p for p in RECIPES if p in LAUNCH_RECIPES or re.search(r"^# Global batch:", _header(p), re.M)]


def test_the_paper_recipes_carry_their_launch():
    names = {_rel(p) for p in LAUNCH_RECIPES}
    assert {"recipes/llama3-70b/rm.yaml", "recipes/nemotron4-340b/rm.yaml", "recipes/llama3.1-70b/reinforce.yaml",
            "recipes/llama3-70b/steerlm2.yaml"} <= names, names
    assert not any(n.startswith("recipes/demo/") for n in names), "the demo recipes run on whatever the command says"


def _processes(recipe: dict) -> int:
    """The processes one optimizer step spans: the recipe's launch:, or each DPO round's for iterative DPO (whose
    driver is one process)."""
    if "launch" in recipe:
        return int(recipe["launch"]["num_processes"])
    return int(recipe["round_num_processes"])


@pytest.mark.parametrize("recipe", BATCH_RECIPES, ids=_rel)
def test_header_global_batch_is_what_the_recipe_computes(recipe: Path):
    """Global batch = processes x per_device_train_batch_size x gradient_accumulation_steps: every stage here counts an
    optimizer step's batch that way, in its own unit (RM/SFT/SteerLM rows, DPO pairs, PPO prompts, RLOO/GRPO
    completions, SteerLM 2.0 prompts with their n samples). Two stages also state a second number, checked too: RLOO /
    GRPO's prompts (completions / num_generations) and PPO's rollout buffer (global batch x num_mini_batches)."""
    from hs2trl.runtime.recipes import recipe_stage

    header, values, stage = _header(recipe), _recipe(recipe), recipe_stage(str(recipe))
    stated = re.findall(r"^# Global batch: ([\d,]+)", header, re.M)
    assert len(stated) == 1, f"{_rel(recipe)}: the header states the global batch once, as `# Global batch: N ...`"
    mentions = re.findall(r"(?:global batch|GBS)[:\s]+(?:of\s+)?\d", header, re.I)
    assert len(mentions) == 1, f"{_rel(recipe)}: the global batch is stated more than once: {mentions}"
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        assert key in values, f"{_rel(recipe)}: a recipe that states its global batch sets {key}"
    computed = _processes(values) * values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
    assert int(stated[0].replace(",", "")) == computed, f"{_rel(recipe)}: header {stated[0]}, recipe {computed}"
    line = re.search(r"^# Global batch: .*$", header, re.M).group(0)
    if stage in ("rloo", "grpo"):
        prompts = re.search(r"(\d+) prompts", line)
        assert prompts and int(prompts.group(1)) * values["num_generations"] == computed, line
    if stage == "ppo":
        rollout = re.search(r"rollout buffer: (\d+)", header)
        assert rollout and int(rollout.group(1)) == computed * values.get("num_mini_batches", 1), header


@pytest.mark.parametrize("recipe", LAUNCH_RECIPES, ids=_rel)
def test_header_hardware_is_the_recipes_launch(recipe: Path):
    """`Hardware: N nodes x G H100` in the header: N = launch.num_machines, N x G = launch.num_processes."""
    hardware = re.search(r"(\d+) nodes? x (\d+) H100", _header(recipe))
    assert hardware, f"{_rel(recipe)}: the header names the paper's hardware as `N nodes x G H100`"
    nodes, gpus = map(int, hardware.groups())
    launch = _recipe(recipe)["launch"]
    assert (launch.get("num_machines", 1), launch["num_processes"]) == (nodes, nodes * gpus), _rel(recipe)


@pytest.mark.parametrize("recipe", LAUNCH_RECIPES, ids=_rel)
def test_recipe_launch_reads(recipe: Path):
    from hs2trl.runtime.recipes import recipe_launch

    launch = recipe_launch(str(recipe))
    values = _recipe(recipe)["launch"]
    assert launch.num_processes == values["num_processes"]
    assert Path(launch.config_file).is_file() and Path(launch.config_file).stem == values["config_file"]
    assert launch.option_args() == ["--num_machines", str(values["num_machines"])]


def _make_line(target: str, **variables: str) -> str:
    """The one command `make -n TARGET` runs, with HS2 as a marker."""
    assigns = [f"{k}={v}" for k, v in {"HS2": "HS2", **variables}.items()]
    proc = subprocess.run([*MAKE, "-n", target, *assigns], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"make -n {target}: {proc.stderr}"
    return proc.stdout.strip()


def test_make_targets_leave_the_launch_to_the_recipe():
    """A target whose recipe carries launch: passes no processes, accelerate config or machines of its own."""
    from hs2trl.runtime.recipes import recipe_launch, resolve_recipe

    with_launch = []
    for target in TARGETS:
        words = shlex.split(_make_line(target))
        if "--config" not in words:
            continue
        recipe = resolve_recipe(words[words.index("--config") + 1])
        if recipe_launch(recipe) is None:
            continue
        with_launch.append(target)
        for option in ("--num-processes", "--accelerate-config", "--num_machines", "--num_processes"):
            assert not any(w.startswith(option) for w in " ".join(words).split()), f"make {target}: {option}"
    assert len(with_launch) == len(LAUNCH_RECIPES), with_launch


# The paper targets' launch before their recipes carried it (the make files named it): (command, recipe,
# accelerate config, processes, machines). Their dry runs must print the same accelerate command as then.
PAPER_TARGETS = {
    "rm-llama3-70b": ("train-rm", "llama3-70b/rm", "multinode_zero3", 32, 4),
    "rm-nemotron4-340b": ("train-rm", "nemotron4-340b/rm", "multinode_zero3", 128, 16),
    "rm-baseline-hh-rlhf": ("train-rm", "llama3-70b/rm-hh-rlhf", "multinode_zero3", 32, 4),
    "rm-baseline-open-assistant": ("train-rm", "llama3-70b/rm-open-assistant", "multinode_zero3", 32, 4),
    "rm-baseline-helpsteer": ("train-rm", "llama3-70b/rm-helpsteer1", "multinode_zero3", 32, 4),
    "rm-llama3.1-70b-helpfulness": ("train-rm", "llama3.1-70b/rm-helpfulness", "multinode_zero3", 32, 4),
    "rm-llama3.1-70b-scaled-bt": ("train-rm", "llama3.1-70b/rm-scaled-bt", "multinode_zero3", 32, 4),
    "sft-daring-anteater": ("sft", "llama3-70b/sft-daring-anteater", "multinode_zero3", 64, 8),
    "sft-open-assistant": ("sft", "llama3-70b/sft-open-assistant", "multinode_zero3", 64, 8),
    "dpo-llama3-70b": ("dpo", "llama3-70b/dpo", "multinode_zero3", 64, 8),
    "ppo-llama3-70b": ("ppo", "llama3-70b/ppo", "multinode_zero3", 64, 8),
    "rloo-llama3.1-70b": ("rloo", "llama3.1-70b/reinforce", "multinode_zero3", 64, 8),
    "steerlm-llama3-70b": ("steerlm", "llama3-70b/steerlm", "multinode_zero3", 32, 4),
    "steerlm2-llama3-70b": ("steerlm2", "llama3-70b/steerlm2", "multinode_zero3", 32, 4),
}
NODE_1 = "--machine_rank 1 --main_process_ip 10.0.0.1"  # what a node passes in make's LAUNCH


@pytest.fixture(scope="module")
def paper_dry_runs() -> dict[tuple[str, str], tuple]:
    """(target, LAUNCH) -> (today's make line run dry, the old explicit command run dry): through the real CLI."""
    jobs = {}
    for target, (command, recipe, config, processes, machines) in PAPER_TARGETS.items():
        for launch in ("", NODE_1):
            today = shlex.split(_make_line(target, ARGS="--dry-run", LAUNCH=launch))[1:]
            before = [command, "--config", recipe, "--accelerate-config", config, "--num-processes", str(processes),
                      "--launcher-args", f"--num_machines {machines} {launch}", "--dry-run"]
            jobs[(target, launch)] = (today, before)
    results = run_cli_batch([argv for pair in jobs.values() for argv in pair])
    return {key: (results[2 * i], results[2 * i + 1]) for i, key in enumerate(jobs)}


def test_paper_targets_are_all_the_launch_recipes():
    from hs2trl.runtime.recipes import resolve_recipe

    assert {Path(resolve_recipe(r)) for _, r, *_ in PAPER_TARGETS.values()} == set(LAUNCH_RECIPES)


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["", NODE_1], ids=["no-LAUNCH", "LAUNCH-node-1"])
@pytest.mark.parametrize("target", list(PAPER_TARGETS))
def test_paper_target_dry_run_prints_the_launch_as_before(target, launch, paper_dry_runs):
    today, before = paper_dry_runs[(target, launch)]
    context = f"today:\n{today.stdout}\n{today.stderr[-2000:]}\nbefore:\n{before.stdout}\n{before.stderr[-2000:]}"
    command, _, config, processes, machines = PAPER_TARGETS[target]
    if command == "ppo" and "hs2trl[ppo]" in today.stderr:  # TRL >= 1.13 has no PPOTrainer: one line, either way
        assert today.returncode == before.returncode == 2 and today.stderr == before.stderr, context
        return
    assert today.returncode == 0 and before.returncode == 0, context
    assert today.stdout == before.stdout, context
    assert f"{config}.yaml --num_processes {processes} " in today.stdout, context
    assert f"--num_machines {machines}" in today.stdout, context
    if launch:
        assert f"--num_machines {machines} {launch} -m hs2trl.stages." in today.stdout, context


# A bad launch: is one line naming the recipe and the key, exit status 2, through the real CLI (as tests/cli/
# test_bad_input.py's rows; here because each row needs its own recipe file).
BAD_LAUNCH = [
    ("unknown-key", "launch:\n  num_proceses: 2\n", ["'num_proceses'", "did you mean 'num_processes'"]),
    ("non-integer-processes", "launch:\n  num_processes: many\n", ["launch.num_processes", "invalid int", "'many'"]),
    ("fractional-processes", "launch:\n  num_processes: 2.5\n", ["launch.num_processes", "invalid int", "'2.5'"]),
    ("no-processes", "launch:\n  num_processes: 0\n", ["launch.num_processes", "1 or more"]),
    ("unknown-accelerate-config", "launch:\n  config_file: zero9\n",
     ["launch.config_file", "'zero9'", "no such file or bundled name"]),
    ("bad-accelerate-choice", "launch:\n  mixed_precision: fp9\n", ["launch.mixed_precision", "choice: 'fp9'"]),
    ("flag-not-a-boolean", "launch:\n  same_network: 3\n", ["launch.same_network", "true or false"]),
    ("per-node-option", "launch:\n  machine_rank: 1\n", ["launch.machine_rank", "--launcher-args"]),
    ("uneven-machines", "launch:\n  num_processes: 6\n  num_machines: 4\n", ["launch.num_processes", "machines 4"]),
    ("not-a-mapping", "launch: 4\n", ["launch:", "expected a mapping"]),
    # iterative DPO's driver is one process: its rounds have settings of their own
    ("iterative-dpo-driver", "launch:\n  num_processes: 2\n", ["launch:", "round_num_processes"]),
]


@pytest.fixture(scope="module")
def bad_launch_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("bad_launch")
    jobs = {}
    for name, text, _ in BAD_LAUNCH:
        (d / f"{name}.yaml").write_text(text + "bf16: false\n")
        command = ["dpo", "--iterative"] if name == "iterative-dpo-driver" else ["train-rm"]
        jobs[name] = [*command, "--config", str(d / f"{name}.yaml"), "--dry-run"]
    return dict(zip(jobs, run_cli_batch(list(jobs.values())), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name, expect", [(n, e) for n, _, e in BAD_LAUNCH], ids=[n for n, _, _ in BAD_LAUNCH])
def test_bad_launch_is_one_line_exit_2(name, expect, bad_launch_runs):
    proc = bad_launch_runs[name]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    context = f"\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and proc.returncode == 2, context
    assert len(lines) == 1 and lines[0].startswith("hs2: error: ") and f"{name}.yaml" in lines[0], context
    for part in expect:
        assert part in lines[-1], f"{part!r} not in {lines[-1]!r}"


# ------------------------------------------------------------------ the command line over the recipe's launch:


def _paper_rm_args() -> list[str]:
    from hs2trl.runtime.recipes import resolve_recipe

    return ["--config", resolve_recipe("llama3-70b/rm")]


def test_launcher_args_add_a_nodes_settings_to_the_recipes_launch(capsys):
    from hs2trl.runtime.launch import Launch, stage_launch

    launch = stage_launch("train_rm", _paper_rm_args(), Launch(None, None, NODE_1))
    assert launch.num_processes == 32 and launch.accelerate_config.endswith("multinode_zero3.yaml")
    assert launch.launcher_args == f"--num_machines 4 {NODE_1}"
    assert capsys.readouterr().err == ""  # nothing of the recipe's is overridden: nothing to say


def test_launcher_args_override_the_same_recipe_setting_in_one_line(capsys):
    from hs2trl.runtime.launch import Launch, stage_launch

    launch = stage_launch("train_rm", _paper_rm_args(), Launch(None, None, f"--num-machines=2 {NODE_1}"))
    assert launch.num_processes == 32 and launch.launcher_args == f"--num-machines=2 {NODE_1}"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rm.yaml" in err[0] and "num_machines 4 -> 2" in err[0], err


@pytest.mark.parametrize("given", [dict(num_processes=8), dict(accelerate_config="zero3"),
                                   dict(launcher_args="--num_processes 8")], ids=["processes", "config", "in-args"])
def test_processes_or_config_on_the_command_line_replace_the_recipes_launch(given, capsys):
    """Processes, machines and config go together: a command line naming processes or a config sets the launch."""
    from hs2trl.runtime.launch import Launch, stage_launch

    mine = Launch(**{"accelerate_config": None, "num_processes": None, "launcher_args": None, **given})
    assert stage_launch("train_rm", _paper_rm_args(), mine) == mine
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "replace the launch: of" in err[0] and "num_machines 4" in err[0], err


def test_a_recipe_without_launch_changes_nothing(capsys):
    from hs2trl.runtime.launch import Launch, stage_launch
    from hs2trl.runtime.recipes import recipe_launch, resolve_recipe

    assert recipe_launch(resolve_recipe("demo/rm")) is None
    given = Launch(None, 2, None)
    assert stage_launch("train_rm", ["--config", resolve_recipe("demo/rm")], given) is given
    assert capsys.readouterr().err == ""


# ------------------------------------------------ HelpSteer2-Preference: regression, then scaled BT, then ExPO


def _make_words(target: str) -> list[str]:
    return shlex.split(_make_line(target))[1:]


def _option(words: list[str], name: str) -> str:
    assert name in words, f"{name} not in {words}"
    return words[words.index(name) + 1]


@pytest.mark.parametrize("folder, expo, evals", [
    ("llama3.1-70b", "rm-llama3.1-70b-expo",
     ["eval-rm-llama3.1-70b-expo", "eval-rm-llama3.1-70b-expo-rewardbench2"]),
    ("demo", "rm-demo-expo", ["eval-rm-demo-preference", "eval-rm-demo-preference-rewardbench2"]),
], ids=["llama3.1-70b", "demo"])
def test_preference_chain_reads_what_the_step_before_wrote(folder, expo, evals):
    """Stage 2 starts from stage 1's output with a pairwise loss; ExPO extrapolates stage 2 from stage 1, picking alpha
    on validation pairs; the eval targets read ExPO's output."""
    one, two = (_recipe(REPO / "recipes" / folder / f"{name}.yaml") for name in ("rm-helpfulness", "rm-scaled-bt"))
    assert one["attributes"] == ["helpfulness"] and one["loss"] == "regression"
    assert two["loss"] == "scaled_bt" and two["model_name_or_path"] == one["output_dir"]
    words = _make_words(expo)
    assert words[0] == "expo"
    assert _option(words, "--base") == one["output_dir"] and _option(words, "--model") == two["output_dir"]
    assert _option(words, "--eval-split") == "validation" and "--alphas" in words
    for target in evals:
        assert _option(_make_words(target), "--model") == _option(words, "--output"), target


def test_paper_preference_recipes_keep_the_guides_settings():
    """NeMo-Aligner's HelpSteer2-Preference recipe (docs/user-guide/steerlm.rst): 128 responses per step in both
    stages (stage 2: 64 pairs, each pair's two responses in one batch), LR 2e-6 for 2 epochs then 1e-6 for one, 10
    warm-up steps then constant, from Llama-3.1-70B-Instruct."""
    one, two = (_recipe(REPO / "recipes/llama3.1-70b" / f"{name}.yaml") for name in ("rm-helpfulness", "rm-scaled-bt"))
    batch = {id(r): _processes(r) * r["per_device_train_batch_size"] * r["gradient_accumulation_steps"]
             for r in (one, two)}
    assert batch[id(one)] == 128 and 2 * batch[id(two)] == 128  # TRL counts stage 2's batch in pairs
    assert (one["learning_rate"], one["num_train_epochs"]) == (2e-6, 2)
    assert (two["learning_rate"], two["num_train_epochs"]) == (1e-6, 1)
    for r in (one, two):
        assert (r["lr_scheduler_type"], r["warmup_steps"], r["eval_steps"]) == ("constant_with_warmup", 10, 10)
    assert one["model_name_or_path"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert two["dataset_name"] == "nvidia/HelpSteer2:preference"


def test_demo_preference_chain_runs_its_steps_in_order():
    """`make rm-demo-preference` says the strengths are derived, then runs stage 1, stage 2, ExPO and RewardBench 2,
    each a target of its own (so each is dry-run above)."""
    proc = subprocess.run([*MAKE, "-n", "rm-demo-preference", "HS2=HS2"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "derived" in proc.stdout.lower() and "not annotated" in proc.stdout
    steps = [shlex.split(line)[1:] for line in proc.stdout.splitlines() if line.startswith("HS2 ")]
    assert [s[0] for s in steps] == ["train-rm", "train-rm", "expo", "eval-rm"], steps
    assert [_option(s, "--config") for s in steps[:2]] == ["demo/rm-helpfulness", "demo/rm-scaled-bt"]
    assert _option(steps[3], "--benchmark") == "rewardbench2"
    targets = re.findall(r"--no-print-directory (\S+)", proc.stdout)
    assert targets and all(t in TARGETS for t in targets), targets
