"""deploy/quickstart.sh reinstalls when pyproject.toml changed since the last install.

The script's install block (between ``# install-begin`` and ``# install-end``) runs alone
in a scratch directory whose ``.venv`` holds stand-ins for python, pip and busbell that
record how they were called: a real install needs the network and minutes.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def install_block() -> str:
    text = (ROOT / "deploy" / "quickstart.sh").read_text()
    begin, end = text.index("# install-begin"), text.index("# install-end")
    return "set -euo pipefail\n" + text[begin:end]


def scratch(tmp_path: Path, *, imports_ok: bool = True) -> Path:
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    (bin_ / "pip").write_text(f'#!/bin/sh\necho "$*" >>"{calls}"\n')
    (bin_ / "python").write_text(f"#!/bin/sh\nexit {0 if imports_ok else 1}\n")
    (bin_ / "busbell").write_text("#!/bin/sh\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "busbell"\n')
    return tmp_path


def run(d: Path) -> list[str]:
    """Run the install block in ``d``; the pip calls it made."""
    calls = d / "pip-calls"
    calls.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", install_block()], cwd=d, check=True)
    return calls.read_text().splitlines() if calls.exists() else []


def test_it_reinstalls_when_pyproject_changed_and_only_then(tmp_path: Path) -> None:
    d = scratch(tmp_path)
    assert run(d) == ["install -q --upgrade pip", "install -q -e .[demo]"]  # no stamp yet
    stamp = (d / ".venv" / ".busbell-pyproject.sha256").read_text().strip()
    assert stamp == hashlib.sha256((d / "pyproject.toml").read_bytes()).hexdigest()
    assert run(d) == []  # unchanged: nothing to do
    with (d / "pyproject.toml").open("a") as f:
        f.write('dependencies = ["msgspec"]\n')
    assert run(d)[-1] == "install -q -e .[demo]"
    assert run(d) == []


def test_it_reinstalls_when_the_demo_extras_do_not_import(tmp_path: Path) -> None:
    d = scratch(tmp_path, imports_ok=False)
    run(d)
    assert run(d)[-1] == "install -q -e .[demo]"
