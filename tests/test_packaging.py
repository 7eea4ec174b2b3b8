"""What ships: the installed packages hold no benchmark or test-builder code."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("busbell", "edge", "backend", "firmware_sim")


def test_no_benchmark_modules_in_the_packages() -> None:
    found = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*bench*")]
    assert found == [], f"benchmarks belong in benchmarks/: {found}"


def test_tests_do_not_import_benchmarks() -> None:
    """Shared builders live in tests/factories (benchmarks import them from there)."""
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in (ROOT / "tests").rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if line.lstrip().startswith(("from benchmarks", "import benchmarks"))
    ]
    assert found == [], f"move the builders to tests/factories: {found}"


def test_benchmarks_and_tests_are_not_installed() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = conf["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == sorted(f"{p}*" for p in PACKAGES)
