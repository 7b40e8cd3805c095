"""The docs and the CLI say the same thing: every `hs2 ...` command written in README.md and docs/*.md (code blocks
and inline code) names a real command with options it has, and every example in a code block passes its own
`--dry-run` (which parses the recipe and every pass-through `--key value` as the real run would)."""

from __future__ import annotations

import functools
import re
import shlex

import pytest
import typer

from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fixtures import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")  # COMMAND, DIR, ...: stands for something the reader fills in


def documented_commands() -> list[tuple[str, bool, list[str]]]:
    """(where, is an example to run, hs2 arguments) for every `hs2 ...` in the docs. Code-block lines are examples
    (continuation lines joined, comments cut); `$ hs2 ...` lines show an error and inline code names a command: those
    are checked for what they name, not run. `...` and the brackets of a synopsis are dropped."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.strip()
                transcript = line.startswith("$ ")
                line = line.removeprefix("$ ")
                if line.startswith("hs2 "):
                    line = re.split(r"\s+#\s", line)[0].strip()  # a trailing comment
                    found.append((f"{doc.name}: {line}", not transcript, _words(line)))
        for span in re.findall(r"`(hs2 [^`]+)`", text):
            found.append((f"{doc.name}: `{span}`", False, _words(span)))
    return found


def _words(command: str) -> list[str]:
    return [w.strip("[]") for w in shlex.split(command)[1:] if w not in ("...", "[", "]")]


COMMANDS = documented_commands()


@functools.cache
def _cli():
    from typer.main import get_command

    from hs2trl.cli import app

    return get_command(app)


def _click_command(words: list[str]):
    """(click command, its name, the arguments after it) for `hs2 WORDS`."""
    from typer.core import TyperGroup

    command, name, rest = _cli(), "hs2", list(words)
    while isinstance(command, TyperGroup) and rest and not rest[0].startswith("-"):
        sub = command.get_command(typer.Context(command), rest[0])
        assert sub is not None, f"`hs2 {' '.join(words)}`: no command '{rest[0]}' under `{name}`"
        command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
    return command, name, rest


def test_the_docs_name_commands():
    assert len(COMMANDS) > 60 and sum(run for _, run, _ in COMMANDS) > 30


@pytest.mark.parametrize("where, run, words", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_and_options_exist(where, run, words):
    """The command line is parsed (Typer's click) without running it: an option the command does not have (outside
    the commands that pass `--key value` on to their recipe) or a bad value is an error here."""
    if words and PLACEHOLDER.match(words[0]):
        return
    command, name, rest = _click_command(words)
    if not rest and not run or "--help" in rest:  # text naming a command: that it exists is all it says
        return
    try:
        command.make_context(name, list(rest), resilient_parsing=False)
    except typer.TyperException as err:  # click's usage errors (Typer vendors click)
        pytest.fail(f"{where}: {err}")


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory, tiny_lm_dir) -> dict[str, object]:
    """Every runnable example with --dry-run, from a folder holding the local inputs the examples name."""
    cwd = tmp_path_factory.mktemp("docs_examples")
    (cwd / "my-model").symlink_to(tiny_lm_dir)  # README: `hs2 train-rm --model ./my-model ...`
    examples = [(where, words) for where, run, words in COMMANDS
                if run and "dry_run" in {p.name for p in _click_command(words)[0].params}]
    results = run_cli_batch([[*words, "--dry-run"] for _, words in examples], cwd=str(cwd))
    return dict(zip([where for where, _ in examples], results))


@pytest.mark.slow
@pytest.mark.parametrize("where", [w for w, run, _ in COMMANDS if run], ids=[w for w, run, _ in COMMANDS if run])
def test_documented_example_passes_its_dry_run(where, dry_runs):
    if where not in dry_runs:
        pytest.skip("this command has no --dry-run")
    proc = dry_runs[where]
    from hs2trl.trl_internals import has_ppo_trainer

    if where.split(": ", 1)[1].startswith("hs2 ppo") and not has_ppo_trainer():  # TRL >= 1.13: the [ppo] line
        assert proc.returncode == 2 and "hs2trl[ppo]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, f"{where}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr


def test_help_has_no_type_labels_on_flags():
    """Flags take no value: their help line shows none (Typer's rich help labelled every one `<bool>`)."""
    from typer.testing import CliRunner

    from hs2trl.cli import app

    for command, flag in (("train-rm", "--dry-run"), ("export-rm", "--no-check"), ("dpo", "--iterative"),
                          ("push", "--private")):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=120)
        assert result.exit_code == 0 and flag in result.output, result.output
        assert "<bool>" not in result.output and "--help " in result.output, result.output
