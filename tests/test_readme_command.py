"""The README's test command is exactly what CI runs (.ci/run's last line)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_last = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()][-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_last.startswith(".venv/bin/ruff check . && ")
    assert f"\n{ci_last}\n" in readme
    assert "--core-coverage" in ci_last
