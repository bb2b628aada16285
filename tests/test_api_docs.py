"""docs/api.md, the generated API reference (scripts/make_api_docs.py): current with the code,
a docstring for every public name, no memory addresses, links that land on a heading."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from scripts_loader import load_script

make_api_docs = load_script("make_api_docs")


@pytest.fixture(scope="module")
def page() -> str:
    return make_api_docs.render()


def test_api_docs_are_current(page: str) -> None:
    written = make_api_docs.OUTPUT.read_text(encoding="utf-8")
    if written != page:
        diff = "".join(list(difflib.unified_diff(
            written.splitlines(keepends=True), page.splitlines(keepends=True),
            "docs/api.md", "what scripts/make_api_docs.py writes now"))[:40])
        pytest.fail("docs/api.md is out of date: run `python scripts/make_api_docs.py` and "
                    f"commit the result.\n{diff}")


def test_every_public_name_has_a_docstring() -> None:
    missing = make_api_docs.missing_docstrings()
    assert not missing, ("public names (in their module's __all__) without a docstring; "
                         f"constants take the string literal after their assignment: {missing}")


def test_no_memory_address(page: str) -> None:
    found = re.findall(r"\S*0x[0-9a-fA-F]{4,}\S*", page)
    assert not found, f"docs/api.md would hold memory addresses (not deterministic): {found}"


def test_every_public_name_has_an_entry(page: str) -> None:
    for module, entries in make_api_docs.collect():
        headings = [e.qualname for e in entries]
        assert [e.name for e in entries] == list(module.__all__)
        positions = [page.index(f"### `{name}`\n") for name in headings]
        assert positions == sorted(positions), f"{module.__name__}: not in __all__ order"


def test_links_land_on_headings(page: str) -> None:
    headings = re.findall(r"^#+ (.+)$", page, flags=re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    broken = sorted({a for a in re.findall(r"\]\(#([^)]+)\)", page) if a not in slugs})
    assert not broken, f"links to no heading: {broken}"
    assert page.count("\n```") % 2 == 0, "an unclosed code fence"


def test_check_flags_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], page: str) -> None:
    monkeypatch.setattr(make_api_docs, "ROOT", tmp_path)
    monkeypatch.setattr(make_api_docs, "OUTPUT", tmp_path / "docs" / "api.md")
    monkeypatch.setattr(make_api_docs, "render", lambda: page)
    assert make_api_docs.main(["--check"]) == 1  # missing
    assert make_api_docs.main([]) == 0
    assert make_api_docs.main(["--check"]) == 0
    (tmp_path / "docs" / "api.md").write_text(page + "edited by hand\n", encoding="utf-8")
    assert make_api_docs.main(["--check"]) == 1
    assert "run python scripts/make_api_docs.py" in capsys.readouterr().err
