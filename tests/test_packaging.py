"""What installing distill puts into site-packages, and ``python -m distill`` from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> list[str]:
    """The packages setuptools installs, found as the build does from pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    return find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))


def test_only_the_distill_namespace_is_installed() -> None:
    packages = _packages()
    assert {"distill", "distill.teachers", "distill.students"} <= set(packages)
    assert all(p == "distill" or p.startswith("distill.") for p in packages), packages
    assert not (ROOT / "teachers").exists() and not (ROOT / "students").exists()


@pytest.mark.integration
def test_python_m_distill_from_the_parent_of_a_checkout_named_distill(tmp_path: Path) -> None:
    """A folder named ``distill/`` in the working directory (a checkout, no ``__init__.py``) must not
    shadow the installed package: it is only a namespace portion, and the real package wins."""
    checkout = tmp_path / "distill"
    checkout.mkdir()
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    (checkout / "README.md").write_text("a checkout\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # where the package is "installed" for this test (the editable install's path)
    done = subprocess.run([sys.executable, "-m", "distill", "list"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "teachers: gaussian_process, network, sklearn" in done.stdout
    assert "students: cnn, mlp" in done.stdout
