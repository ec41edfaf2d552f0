"""autotune as a user installs it: a wheel built from the repository, installed into a fresh
virtual environment and run from a folder outside the repository, finds its presets, its report
template and its environments inside the installed package.

Nothing is downloaded: the wheel is built without build isolation (with this environment's
setuptools) and installed without dependencies; the fresh environment then sees this
environment's packages through a ``.pth`` line (written after the install, so pip does not take
the development install for the wheel's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, ROOT, tiny_job_text

pytestmark = pytest.mark.slow

#: what a wheel is built from (the top-level folders the package links to included)
SOURCES = ("pyproject.toml", "README.md", "autotune", "search_spaces", "dashboards", "envs")

OBJECTIVE = '''
def zdt1(config):
    x1, x2 = config["x1"], config["x2"]
    g = 1 + 9 * x2
    return {"f1": x1, "f2": g * (1 - (x1 / g) ** 0.5)}
'''

CUSTOM_JOB = """
name: packaged
objective: myobj:zdt1
search_space:
  parameters:
    x1: {low: 0.0, high: 1.0}
    x2: {low: 0.0, high: 1.0}
objectives:
  - {metric: f1, direction: minimize}
  - {metric: f2, direction: minimize}
agent: {name: random, seed: 1}
budget: {max_trials: 3}
tracking: {enabled: false}
"""


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _checkout_copy(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    return src


def _fresh_venv(env_dir: Path, *install: str) -> Path:
    """A venv with ``pip install --no-deps *install`` done in it (seeing only this environment's
    setuptools, for an editable build), then this environment's packages made visible; returns
    its ``bin`` folder."""
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env_dir).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    tools = env_dir / "build-tools"
    tools.mkdir()
    for entry in ours.iterdir():
        if entry.name.startswith(("setuptools", "_distutils_hack", "pkg_resources")):
            (tools / entry.name).symlink_to(entry)
    pth = site / "autotune-test-deps.pth"
    pth.write_text(f"{tools}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--no-build-isolation", "-q", *install], cwd=env_dir)
    pth.write_text(f"{ours}\n")
    return env_dir / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv with the wheel built from this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(tmp)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("autotune-*.whl")
    return _fresh_venv(tmp / "venv", str(wheel))


RESOURCES = textwrap.dedent("""
    import autotune, autotune.envs, gymnasium
    from autotune.core.space import PRESET_DIR
    from autotune.review.report import TEMPLATE
    print(autotune.__file__)
    print(sorted(p.name for p in PRESET_DIR.glob('*.yaml')))
    print(TEMPLATE.is_file(), autotune.envs.CONFIG_SEARCH_ID in gymnasium.registry)
    print(gymnasium.registry[autotune.envs.CONFIG_SEARCH_ID].entry_point)
""")


def test_the_wheel_ships_presets_template_and_environments(installed: Path, tmp_path: Path) -> None:
    lines = _run([str(installed / "python"), "-c", RESOURCES], cwd=tmp_path).stdout.splitlines()
    venv_dir = installed.parent.resolve()
    assert Path(lines[0]).resolve().is_relative_to(venv_dir), lines[0]  # the wheel's, not the checkout's
    want = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert lines[1] == str(want)
    assert lines[2] == "True True"
    assert lines[3] == "autotune.envs.config_search:ConfigSearchEnv"


def test_installed_cli_validates_a_preset_job_and_reports_a_finished_job(installed: Path,
                                                                         tmp_path: Path) -> None:
    cli = str(installed / "autotune")
    # validate: a job whose space is a preset, found inside the installed package
    shutil.copy(EXPERIMENTS / "digits_model.py", tmp_path / "digits_model.py")
    (tmp_path / "preset.yaml").write_text(tiny_job_text(4, search_space={"preset": "cpu-inference"}))
    out = _run([cli, "validate", "preset.yaml"], cwd=tmp_path).stdout
    assert "job 'tiny'" in out
    assert "calibration" in out and "int8_static" in out  # parameters only the preset has

    # a finished job, then its report (the template comes from the installed package)
    (tmp_path / "myobj.py").write_text(OBJECTIVE)
    (tmp_path / "custom.yaml").write_text(textwrap.dedent(CUSTOM_JOB).lstrip())
    _run([cli, "run", "custom.yaml", "--quiet"], cwd=tmp_path, timeout=180)
    out = _run([cli, "status", "custom.yaml"], cwd=tmp_path).stdout
    assert "3 trials, 3 complete, 0 failed, budget used up" in out
    _run([cli, "report", "custom.yaml", "--out", "report.html"], cwd=tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "autotune · packaged" in page
    assert "Pareto front" in page and "All trials" in page


def test_an_editable_install_finds_them_in_the_checkout(tmp_path: Path) -> None:
    src = _checkout_copy(tmp_path)
    bin_dir = _fresh_venv(tmp_path / "venv", "-e", str(src))
    out = tmp_path / "elsewhere"
    out.mkdir()
    lines = _run([str(bin_dir / "python"), "-c", RESOURCES], cwd=out).stdout.splitlines()
    assert Path(lines[0]).resolve() == (src / "autotune" / "__init__.py").resolve()
    assert lines[1] == str(sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))
    assert lines[2:] == ["True True", "autotune.envs.config_search:ConfigSearchEnv"]
