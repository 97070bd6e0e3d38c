"""The model-repository templates ship in the wheel: a wheel built from this checkout, installed into a folder of
its own, finds them inside the installed package, and `ssn deploy` run from that install fills a repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.backbone import load_backbone
from pipeline.checkpoint import save_checkpoint
from pipeline.config import get_preset
from pipeline.model import SuperSimpleNet

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("kernels", "pipeline", "training", "model_repository", "pyproject.toml", "setup.py", "README.md")
PROBE = """
import json, pipeline.deploy.repository as r
print(json.dumps({"module": r.__file__, "templates": str(r.TEMPLATES), "models": sorted(r.model_configs(r.TEMPLATES))}))
"""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def template_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the build writes build/ and *.egg-info beside them) and
    installed with --target into a folder outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, tmp / "src" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(tmp / "src")])
    (wheel,) = (tmp / "dist").glob("supersimplenet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n.removeprefix("pipeline/deploy/model_repository/") for n in archive.namelist()}
    assert template_files(ROOT / "model_repository") <= packaged  # every template file is in the wheel
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)])
    return tmp / "site"


def from_install(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    return run([sys.executable, *args], env=env, cwd=cwd)


def test_templates_are_found_in_the_installed_wheel(installed, tmp_path):
    found = json.loads(from_install(installed, ["-c", PROBE], tmp_path).stdout)
    assert Path(found["module"]).is_relative_to(installed)  # the installed copy, not this checkout
    assert Path(found["templates"]) == installed / "pipeline" / "deploy" / "model_repository"
    assert found["models"] == sorted(p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt"))


@pytest.mark.filterwarnings("ignore:backbone resnet18 uses RANDOM weights")
def test_ssn_deploy_from_the_installed_wheel(installed, tmp_path):
    config = get_preset("tiny").model
    model = SuperSimpleNet(config, load_backbone(config.backbone, "random"))
    checkpoint = save_checkpoint(model, tmp_path / "ck.safetensors", "random")
    out = tmp_path / "repo"
    cli = ["-c", "import sys; from pipeline.cli import main; sys.exit(main())"]
    deploy = ["deploy", "--target", "py", "--checkpoint", str(checkpoint), "--out", str(out)]
    from_install(installed, [*cli, *deploy], tmp_path)
    deployed = out / "supersimplenet_py"
    assert (deployed / "config.pbtxt").is_file() and (deployed / "1" / "model.py").is_file()
    shipped = installed / "pipeline" / "deploy" / "model_repository" / "supersimplenet_py" / "1" / "model.py"
    assert (deployed / "1" / "model.py").read_bytes() == shipped.read_bytes()
