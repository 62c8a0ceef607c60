"""The README documents every setting exactly as the code defines it."""

from __future__ import annotations

from idcscan.core.commands import settings_markdown
from tests.conftest import ROOT


def test_readme_settings_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table -->") + len("<!-- settings-table -->")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end].strip() == settings_markdown(), (
        "README settings table is stale: regenerate it with `idcscan settings --markdown`"
    )
