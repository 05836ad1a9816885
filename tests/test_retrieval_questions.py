"""The labelled question set of the retrieval benchmark (bench/retrieval.py) is
what it claims: at least 60 questions in simplified Chinese, traditional
Chinese and English, paraphrases sharing no indexed term with their passage,
cross-language pairs both ways, and every cited passage found in its document
as the pipeline chunks it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.retrieval import build_chunks, load_questions, relevant, rrf, score, shared_keywords


def test_the_question_set_covers_languages_paraphrases_and_cross_language_pairs() -> None:
    questions = load_questions()
    assert len(questions) >= 60 and len({q["id"] for q in questions}) == len(questions)
    languages = Counter(q["lang"] for q in questions)
    assert set(languages) == {"zh-Hans", "zh-Hant", "en"} and min(languages.values()) >= 10
    cross = [q for q in questions if q["kind"] == "cross"]
    assert any(q["lang"] == "en" for q in cross) and any(q["lang"] != "en" for q in cross), "both directions"
    paraphrases = [q for q in questions if q["kind"] == "paraphrase"]
    assert len(paraphrases) >= 10
    assert [q["id"] for q in paraphrases if shared_keywords(q)] == [], "a paraphrase shares no keyword"


def test_every_cited_passage_is_in_a_chunk_of_its_document(corpus_dir: Path) -> None:
    if not (corpus_dir / "MANIFEST.md").exists():
        pytest.skip(f"the shared corpus is not at {corpus_dir} (set CORPUS_DIR)")
    questions = load_questions()
    chunks = build_chunks(corpus_dir)
    answers = relevant(questions, chunks)  # raises, naming the question, when a passage is missing
    assert all(answers) and all(chunks[i].document == q["document"]
                                for q, found in zip(questions, answers, strict=True) for i in found)


def test_recall_and_mrr_and_fusion() -> None:
    rankings = [[3, 1, 2], [5, 6, 7, 8, 9, 10, 11]]
    answers = [{1}, {11}]
    assert score(rankings, answers, [0, 1]) == (0.5, pytest.approx((1 / 2 + 1 / 7) / 2))
    assert rrf([1, 2, 3], [2]) == [2, 1, 3], "found by both beats first in one"
