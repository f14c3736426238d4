"""A plain ``pip install .`` ships the configs: the wheel holds them and the CLI finds them there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lens_train import cli
from lens_train.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _fake_package(root: Path, with_configs: bool) -> Path:
    package = root / "lens_train"
    package.mkdir(parents=True)
    if with_configs:
        (package / "configs").mkdir()
        (package / "configs" / "train.yaml").write_text("seed: 0\n")
    return package / "cli.py"


def test_config_dir_prefers_the_env_then_the_package_then_the_checkout(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("LENS_TRAIN_CONFIG_DIR", raising=False)
    assert cli.config_dir() == ROOT / "configs"  # this source checkout
    monkeypatch.setattr(cli, "__file__", str(_fake_package(tmp_path / "site", with_configs=True)))
    assert cli.config_dir() == tmp_path / "site" / "lens_train" / "configs"
    monkeypatch.setenv("LENS_TRAIN_CONFIG_DIR", str(ROOT / "configs"))
    assert cli.config_dir() == ROOT / "configs"
    monkeypatch.delenv("LENS_TRAIN_CONFIG_DIR")
    monkeypatch.setattr(cli, "__file__", str(_fake_package(tmp_path / "bare", with_configs=False)))
    with pytest.raises(ConfigError, match=r"No train.yaml found in .*bare/lens_train/configs.*LENS_TRAIN_CONFIG_DIR"):
        cli.config_dir()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_ships_every_config_and_the_installed_cli_reads_them(tmp_path) -> None:
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "configs", source / "configs")
    shutil.copytree(ROOT / "lens_train", source / "lens_train", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lens_train-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"lens_train/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert "lens_train/py.typed" in names and not any(n.startswith("configs/") for n in names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "LENS_TRAIN_CONFIG_DIR"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    done = subprocess.run([sys.executable, "-m", "lens_train", "--cfg", "job", "model=mlp"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MLP" in done.stdout and "DigitsDataModule" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import lens_train.cli as c; print(c.config_dir())"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()) == tmp_path / "site" / "lens_train" / "configs"
