"""A normal (non-editable) install finds the bundled recipes and accelerate configs by name, from any folder."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers.fixtures import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    [path] = list(out.glob("hs2trl-*.whl"))
    return str(path)


def test_wheel_bundles_recipes_and_accelerate_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hs2trl/_bundled/recipes/demo/rm.yaml" in names
    assert "hs2trl/_bundled/recipes/llama3-70b/rm.yaml" in names
    for config in ("single_gpu", "ddp", "cpu_ddp", "zero2", "zero3", "zero3_offload", "fsdp2", "multinode_zero3"):
        assert f"hs2trl/_bundled/accelerate_configs/{config}.yaml" in names


def test_installed_wheel_resolves_bundled_names_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-m", "hs2trl.cli", "train-rm", "--config", "llama3-70b/rm", "--accelerate-config", "zero3",
         "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1]
    assert f"{target}/hs2trl/_bundled/accelerate_configs/zero3.yaml" in command
    assert f"{target}/hs2trl/_bundled/recipes/llama3-70b/rm.yaml" in command
