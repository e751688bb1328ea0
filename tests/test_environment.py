"""The dependencies are declared once (pyproject.toml); environment.yml must mirror them."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = {_norm(r) for r in pip_section if not r.startswith("-e")}
    py_reqs = {_norm(r) for r in project["dependencies"]}
    assert conda_reqs == py_reqs, (
        f"only in pyproject.toml: {sorted(py_reqs - conda_reqs)}; "
        f"only in environment.yml: {sorted(conda_reqs - py_reqs)}")
    assert any(str(d).startswith("python=") for d in env["dependencies"])
    assert "-e ." in pip_section, "environment.yml must install the kit itself"


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tbkd"] == "tbkd_helpers.cli:main"
