"""``--write-docs`` owns only its marked section: hand-written text around it is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from busbell.cli import main as busbell_main
from firmware_sim._report import PAGE_HEAD, section_markers, write_section

HAND = "## Other seeds\n\nHand-written analysis, tables and caveats.\n"


def _page(*sections: tuple[str, str]) -> str:
    parts = ["# Accuracy\n\nIntro by hand.\n"]
    for name, body in sections:
        begin, end = section_markers(name)
        parts.append(f"{begin}\n\n{body}\n\n{end}\n")
    parts.append(HAND)
    return "\n".join(parts)


def test_only_the_named_section_is_replaced(tmp_path: Path) -> None:
    p = tmp_path / "accuracy.md"
    p.write_text(_page(("full-scale", "old full"), ("sweep", "old sweep")))
    assert write_section(p, "full-scale", "new full\n\n| a | b |") == "replaced"
    text = p.read_text()
    assert "old full" not in text
    assert "new full\n\n| a | b |" in text
    assert "old sweep" in text  # another generated section
    assert text.startswith("# Accuracy\n\nIntro by hand.\n")
    assert text.endswith(HAND)
    assert write_section(p, "full-scale", "new full\n\n| a | b |") == "replaced"
    assert p.read_text() == text  # idempotent: nothing outside moves


def test_a_file_without_the_section_gets_it_appended_and_a_new_file_a_head(
    tmp_path: Path,
) -> None:
    p = tmp_path / "accuracy.md"
    p.write_text("# Mine\n\nKeep me.\n")
    assert write_section(p, "sweep", "matrix") == "appended"
    text = p.read_text()
    assert text.startswith("# Mine\n\nKeep me.\n\n")
    assert text.rstrip().endswith(section_markers("sweep")[1])
    q = tmp_path / "new.md"
    assert write_section(q, "small-scale", "report") == "created"
    assert q.read_text().startswith(PAGE_HEAD.rstrip())


@pytest.mark.parametrize(
    "broken",
    [
        "{begin}\nno end\n",
        "{end}\n{begin}\n",
        "{begin}\n{end}\n{begin}\n{end}\n",
    ],
)
def test_broken_markers_are_refused_and_the_file_left_alone(tmp_path: Path, broken: str) -> None:
    begin, end = section_markers("sweep")
    p = tmp_path / "accuracy.md"
    p.write_text("# Mine\n" + broken.format(begin=begin, end=end) + HAND)
    before = p.read_text()
    with pytest.raises(ValueError, match="sweep"):
        write_section(p, "sweep", "matrix")
    assert p.read_text() == before


def test_cli_score_write_docs_keeps_the_hand_written_sections(tmp_path: Path) -> None:
    """``busbell sim score --write-docs docs/accuracy.md`` used to rewrite the whole file,
    deleting the "Other seeds" and envelope sections written by hand."""
    p = tmp_path / "accuracy.md"
    p.write_text(_page(("small-scale", "stale report")))
    args = ["sim", "score", "--scale", "small", "--seed", "3", "--scenarios", "quiet_route"]
    assert busbell_main([*args, "--write-docs", str(p)]) == 0
    text = p.read_text()
    assert "stale report" not in text
    assert "| quiet_route |" in text
    assert "--write-docs" in text  # the command, as run
    assert text.startswith("# Accuracy\n\nIntro by hand.\n")
    assert text.endswith(HAND)
    assert busbell_main([*args, "--write-docs", str(p), "--section", "x y"]) == 0
    assert text in p.read_text()  # another section appended, nothing else touched
    p.write_text(section_markers("small-scale")[0] + "\n" + HAND)
    assert busbell_main([*args, "--write-docs", str(p)]) == 2
