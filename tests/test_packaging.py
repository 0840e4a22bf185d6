import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("qflgym-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_everything_under_one_namespace(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"qflgym"}
    names = set(wheel.namelist())
    for module in ("qfl_core/federation.py", "envs/__init__.py", "agents/__init__.py", "configs/__init__.py"):
        assert f"qflgym/{module}" in names


def test_wheel_ships_configs(wheel):
    names = set(wheel.namelist())
    assert "qflgym/configs/federations/default.yaml" in names
    assert "qflgym/configs/federations/qubits8.yaml" in names


def test_installed_presets_resolve_through_package_resources():
    from qflgym.config import preset_names

    assert {"default", "qubits8", "noisy"} <= set(preset_names("federations"))
