"""The docs a newcomer walks point only at things that exist (no broker, no database).

Checked in README.md and docs/**/*.md, outside fenced code blocks:
- relative Markdown links `[text](path#anchor)`: the file exists, and the anchor is a heading of it;
- backticked repository paths (`shared/errors.py`, `deploy/rabbitmq/`): the path exists.
And the decision records are indexed, each with its status and date.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DECISIONS = ROOT / "docs" / "decisions"

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`\s]+)`")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)
# A backticked token is taken as a repository path when it starts at a top-level entry of the
# repository (or climbs out with ../); `application/json` or `/api/v1/tasks` are not paths.
_TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") or p.name == ".env.example"}
_PLACEHOLDER = re.compile(r"[<>{}*|]")


def _prose(text: str) -> str:
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in _HEADING.findall(_prose(path.read_text(encoding="utf-8")))}


def _dangling_links(doc: Path) -> list[str]:
    found = []
    for target in _LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.exists():
            found.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            found.append(f"{target} (no heading #{anchor})")
    return found


def _repository_path(token: str) -> bool:
    if _PLACEHOLDER.search(token) or token.startswith("/"):
        return False
    if token.startswith("../"):
        return True
    first = token.split("/", 1)[0]
    return first in _TOP_LEVEL and ("/" in token or "." in token)


def _dangling_files(doc: Path) -> list[str]:
    found = []
    for token in _CODE.findall(_prose(doc.read_text(encoding="utf-8"))):
        if not _repository_path(token):
            continue
        base = doc.parent if token.startswith("../") else ROOT
        target = (base / token).resolve()
        if not target.is_relative_to(ROOT):
            continue  # beside the repository (../shared/corpus): not ours to check
        if not target.exists():
            found.append(f"`{token}` (no such file)")
    return found


def test_relative_links_resolve() -> None:
    dangling = {str(doc.relative_to(ROOT)): bad for doc in DOCS if (bad := _dangling_links(doc))}
    assert not dangling, f"links to nothing: {dangling}"


def test_backticked_repository_files_exist() -> None:
    dangling = {str(doc.relative_to(ROOT)): bad for doc in DOCS if (bad := _dangling_files(doc))}
    assert not dangling, f"file references to nothing: {dangling}"


def test_the_checker_catches_a_dangling_reference(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("See [x](missing.md), [y](#nowhere) and `shared/fleet_gone.py`.\n"
                   "```\n`shared/inside_a_fence.py`\n```\n# Here\n", encoding="utf-8")
    assert _dangling_links(doc) == ["missing.md (no such file)", "#nowhere (no heading #nowhere)"]
    assert _dangling_files(doc) == ["`shared/fleet_gone.py` (no such file)"]


def test_every_decision_record_is_indexed_with_status_and_date() -> None:
    index = (DECISIONS / "README.md").read_text(encoding="utf-8")
    problems = []
    for record in sorted(DECISIONS.glob("[0-9][0-9][0-9][0-9]-*.md")):
        head = record.read_text(encoding="utf-8").splitlines()[:8]
        if not any(re.fullmatch(r"Status: (proposed|accepted|superseded by \d{4})", line) for line in head):
            problems.append(f"{record.name}: no 'Status:' line near the top")
        if not any(re.fullmatch(r"Date: \d{4}-\d{2}-\d{2}", line) for line in head):
            problems.append(f"{record.name}: no 'Date: YYYY-MM-DD' line near the top")
        if f"]({record.name})" not in index:
            problems.append(f"{record.name}: not in docs/decisions/README.md")
    assert not problems, problems
