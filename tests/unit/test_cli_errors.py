"""``hierfl --version`` and ``hierfl init-model``'s errors: one line ``error: ...``, exit 2.

Runs the installed ``hierfl`` console script (not ``python -m``, which would put the current
directory on ``sys.path`` itself) from a temporary directory holding a numpy-only task module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import hierfl

_TASK = '''
import numpy as np
from hierfl.edge.vector import VectorModel


class _Task:
    def __init__(self, n):
        self.n = n

    def build_model(self):
        return VectorModel(np.arange(self.n, dtype=np.float32))


def make(*, edge_id, fog_id, n):
    return _Task(n)
'''


def _hierfl() -> str:
    exe = Path(sys.executable).parent / "hierfl"
    found = str(exe) if exe.is_file() else shutil.which("hierfl")
    assert found, "the hierfl console script is not installed (pip install -e .)"
    return found


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}  # no PYTHONPATH
    return subprocess.run([_hierfl(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mytask_cli_errors.py").write_text(_TASK)
    return tmp_path


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    res = _run(tmp_path, "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"hierfl {hierfl.__version__}"


def test_init_model_imports_a_task_from_the_current_directory_and_writes_exactly_out(
        workdir: Path) -> None:
    res = _run(workdir, "init-model", "--task", "mytask_cli_errors:make",
               "--options", '{"n": 5}', "--out", "init.npz")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "wrote init.npz (5 parameters)"
    assert sorted(p.name for p in workdir.iterdir() if p.suffix == ".npz") == ["init.npz"]
    with np.load(workdir / "init.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["weights"], np.arange(5, dtype=np.float32))


@pytest.mark.parametrize(("args", "expected"), [
    (["--options", '{"n": 5'], "error: --options is not valid JSON"),
    (["--options", "[5]"], "error: --options must be a JSON object"),
    (["--options", "{}"], "missing 1 required keyword-only argument: 'n'"),
    (["--options", '{"n": 5}', "--out", "x.txt"], "must end in .npz or .safetensors"),
    (["--options", '{"n": 5}', "--out", "mytask_cli_errors.py/x.npz"], "cannot write it"),
    (["--options", '{"n": 5}', "--task", "no_such_module_here:make"], "cannot be imported"),
])
def test_init_model_errors_are_one_line_with_exit_2(workdir: Path, args: list[str],
                                                     expected: str) -> None:
    base = {"--task": "mytask_cli_errors:make", "--out": "init.npz"}
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    argv = [a for k, v in {**base, **pairs}.items() for a in (k, v)]
    res = _run(workdir, "init-model", *argv)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert not any(p.suffix in (".npz", ".txt") for p in workdir.iterdir())


def test_package_metadata_agrees_with_the_version_license_and_changelog() -> None:
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["version"] == hierfl.__version__
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    license_text = (root / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert f"## [{hierfl.__version__}]" in (root / "CHANGELOG.md").read_text()
