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


def link_in(checkout: Path, bin_dir: Path) -> tuple[int, str]:
    """Run the script's ``link_busbell`` from ``checkout`` into ``bin_dir``: (status, stderr)."""
    text = (ROOT / "deploy" / "quickstart.sh").read_text()
    block = text[text.index("# link-begin") : text.index("# link-end")]
    done = subprocess.run(
        ["bash", "-c", f'{block}\nlink_busbell "$1"', "-", str(bin_dir)],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stderr


def test_it_links_busbell_and_replaces_only_a_busbell_checkouts_link(tmp_path: Path) -> None:
    ours = scratch(tmp_path / "ours")
    bin_dir = tmp_path / "bin"
    link = bin_dir / "busbell"
    mine = ours / ".venv" / "bin" / "busbell"
    assert link_in(ours, bin_dir)[0] == 0
    assert link.readlink() == mine
    assert link_in(ours, bin_dir) == (0, "")  # already ours: nothing to say

    other = tmp_path / "other" / ".venv" / "bin" / "busbell"  # another checkout's
    link.unlink()
    link.symlink_to(other)
    status, err = link_in(ours, bin_dir)
    assert status == 0
    assert str(other) in err
    assert link.readlink() == mine

    foreign = tmp_path / "opt" / "busbell"  # e.g. pipx's: not ours to replace
    link.unlink()
    link.symlink_to(foreign)
    status, err = link_in(ours, bin_dir)
    assert status == 1
    assert "leaving it" in err
    assert link.readlink() == foreign

    link.unlink()
    link.write_text("#!/bin/sh\n")
    status, err = link_in(ours, bin_dir)
    assert status == 1
    assert "not a link" in err
    assert not link.is_symlink()
