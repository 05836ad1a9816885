"""Keyword terms for full-text search that works for Chinese.

PostgreSQL's default text-search parser does not segment Chinese (a run of
Han characters becomes one "word"), and the bundled PostgreSQL has no pg_trgm.
So both sides are tokenized here, the same way, and PostgreSQL only indexes
and matches the terms (`to_tsvector('simple', ...)`, a GIN index):

- a run of Han or kana becomes its overlapping character bigrams (plus its
  single characters on the document side, so a one-character query matches);
- anything else becomes lowercased words of letters and digits.

Used by the chunk stage (document side) and the api (query side), so it must
stay standard-library only. See docs/decisions/0011-keyword-search-for-chinese.md.
"""

from __future__ import annotations

import re
import unicodedata

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
# A run of Han/kana, or a run of word characters that are not Han/kana (nor "_").
_RUN = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")
MAX_TERM_CHARS = 64
MAX_QUERY_TERMS = 64
# Question words and function words match nearly every English chunk; a query
# keeps them only when it has nothing else.
_STOPWORD_TEXT = """
a about above after again all am an and any are as at be been before being below between both but by can could
did do does doing down during each few for from further had has have having he her here hers him his how i if in
into is it its itself just me more most my no nor not of off on once only or other our out over own same she should
so some such than that the their them then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _runs(text: str) -> list[tuple[bool, str]]:
    normalized = unicodedata.normalize("NFKC", text).lower()
    return [(bool(m.group(1)), m.group(0)) for m in _RUN.finditer(normalized)]


def document_terms(text: str) -> list[str]:
    """Terms of a chunk, in order (positions matter for ranking)."""
    terms: list[str] = []
    for is_cjk, run in _runs(text):
        if not is_cjk:
            if len(run) <= MAX_TERM_CHARS:
                terms.append(run)
            continue
        for i, char in enumerate(run):  # each character, then the bigram it starts
            terms.append(char)
            if i + 1 < len(run):
                terms.append(run[i : i + 2])
    return terms


def query_terms(text: str) -> list[str]:
    """Distinct terms of a query: bigrams for Han/kana (a lone character as is), words
    otherwise, without English stopwords unless the query is nothing but."""
    seen: dict[str, None] = {}
    for is_cjk, run in _runs(text):
        if not is_cjk:
            if len(run) <= MAX_TERM_CHARS:
                seen.setdefault(run)
        elif len(run) == 1:
            seen.setdefault(run)
        else:
            for i in range(len(run) - 1):
                seen.setdefault(run[i : i + 2])
    terms = [t for t in seen if t not in STOPWORDS] or list(seen)
    return terms[:MAX_QUERY_TERMS]


def search_text(text: str) -> str:
    """What the database turns into the chunk's tsvector."""
    return " ".join(document_terms(text))


def tsquery(terms: list[str]) -> str:
    """An OR query over `terms` for `to_tsquery('simple', ...)`; ranking favours chunks matching more of them.
    Terms hold only letters and digits, so they need no quoting."""
    return " | ".join(terms)
