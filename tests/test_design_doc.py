"""docs/design.md is the design contract the code cites: every citation names one of its
sections, and nothing in the repository reads files from outside it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
#: Where citations live: the package, its tests and tools, and the top-level files.
SCANNED = ("crossmodal", "tests", "benchmarks", "datasets", "experiments", "notebooks", "docs",
           "README.md", "setup.cfg", "pyproject.toml", "Makefile")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".ipynb", ".cfg", ".toml", ""}

#: "docs/design.md §6" and "docs/design.md §2, §3".
CITATION = re.compile(r"docs/design\.md (§\d+(?:, §\d+)*)")
HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)
#: A section of the page cited inside it: "§6", not the paper's "paper §4.1".
INTERNAL = re.compile(r"(?<!paper )§(\d+)(?![.\d])")
#: Paths into the folder beside the checkout: up one level then shared, a path component
#: "shared" joined in Python, or its data, reference and seed folders.
OUTSIDE = re.compile(r'\.\.[/]shared\b|"shared"\s*[/]|\bshared[/](?:data|reference|seeds)\b')


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = REPO / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return files


def _sections() -> list[int]:
    return [int(n) for n in HEADING.findall(DESIGN.read_text(encoding="utf-8"))]


def test_sections_are_numbered_one_to_ten():
    assert _sections() == list(range(1, 11))


def test_every_citation_names_a_section():
    sections = set(_sections())
    cited: dict[int, list[str]] = {}
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            for number in re.findall(r"\d+", match.group(1)):
                cited.setdefault(int(number), []).append(f"{path.relative_to(REPO)}:{line}")
    assert sum(map(len, cited.values())) >= 50  # the scan found the repository's citations
    dangling = {n: where for n, where in cited.items() if n not in sections}
    assert not dangling, f"citations of sections docs/design.md lacks: {dangling}"


def test_the_page_refers_only_to_its_own_sections():
    text = DESIGN.read_text(encoding="utf-8")
    referenced = {int(n) for n in INTERNAL.findall(text)}
    assert referenced and referenced <= set(_sections())


def test_nothing_reads_from_outside_the_repository():
    hits = []
    for path in _scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8",
                                                     errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
