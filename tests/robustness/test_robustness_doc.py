"""docs/robustness.md stays true: every test it names exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_test_the_table_names_exists():
    table = (REPO / "docs" / "robustness.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_[a-z0-9_]+)(\*?)", table))
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)", "\n".join(
        p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("test_*.py")), re.M))
    files = {p.stem for p in (REPO / "tests").rglob("test_*.py")}
    missing = sorted(name + star for name, star in named
                     if name not in files and not (
                         any(d.startswith(name) for d in defined) if star else name in defined))
    assert len(named) > 30 and not missing, missing
