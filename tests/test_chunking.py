"""The chunker: a hard size cap, overlap, strongest boundaries, Chinese
sentences, never a cut inside a character; and the keyword terms for search."""

from __future__ import annotations

import unicodedata
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.worker.chunking.chunker import BLOCK_SEPARATOR, Chunk, chunk_blocks
from services.worker.documents.blocks import Block
from shared.keywords import document_terms, query_terms

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)


def _chunks(blocks: list[Block], size: int, overlap: int) -> tuple[str, list[Chunk]]:
    text = BLOCK_SEPARATOR.join(b.text for b in blocks)
    return text, list(chunk_blocks(blocks, size, overlap))


_words = st.sampled_from(["alpha", "beta", "gamma", "delta", "数据", "向量检索", "知识库", "e\u0301", "👍🏽", "a,", "b;",
                          "end.", "句子。", "问题？", "好！", "分号；", "x" * 40, "\n", "\n\n", " "])
_block_text = st.lists(_words, min_size=1, max_size=120).map(lambda words: " ".join(words).strip() or "x")
_blocks = st.lists(
    st.builds(Block, text=_block_text, kind=st.sampled_from(["paragraph", "heading", "code", "row"]),
              page=st.one_of(st.none(), st.integers(1, 50)), section_break=st.booleans()),
    min_size=1, max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(blocks=_blocks, size=st.integers(20, 400), overlap_share=st.floats(0, 0.5))
def test_every_chunk_is_an_exact_slice_within_the_cap_and_the_text_is_covered(blocks, size, overlap_share) -> None:  # type: ignore[no-untyped-def]
    overlap = int(size * overlap_share)
    text, chunks = _chunks(blocks, size, overlap)
    assert chunks, "a document with text always yields chunks"
    covered_to = 0
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert 0 < len(chunk.content) <= size, "the hard cap holds for every chunk"
        assert text[chunk.char_start:chunk.char_end] == chunk.content, "a chunk is an exact slice, offsets included"
        assert chunk.content == chunk.content.strip()
        assert chunk.char_start <= covered_to or not text[covered_to:chunk.char_start].strip(), "no text is skipped"
        covered_to = max(covered_to, chunk.char_end)
        for edge in (chunk.char_start, chunk.char_end):  # never inside a rendered character
            assert edge >= len(text) or not unicodedata.combining(text[edge])
            assert edge == 0 or text[edge - 1] != "\u200d"
    assert not text[covered_to:].strip()


@settings(max_examples=200, deadline=None)
@given(blocks=_blocks, size=st.integers(20, 400), overlap_share=st.floats(0, 0.5))
def test_consecutive_chunks_overlap_by_at_most_chunk_overlap_and_always_advance(blocks, size, overlap_share) -> None:  # type: ignore[no-untyped-def]
    overlap = int(size * overlap_share)
    _, chunks = _chunks(blocks, size, overlap)
    for previous, chunk in pairwise(chunks):
        assert chunk.char_end > previous.char_end, "every chunk brings new text"
        shared = max(0, previous.char_end - chunk.char_start)
        assert shared <= overlap


def test_overlap_reaches_back_to_a_sentence_start() -> None:
    sentences = [f"Sentence number {i} talks about retrieval." for i in range(40)]
    _, chunks = _chunks([Block(" ".join(sentences))], 300, 100)
    assert len(chunks) > 3
    for previous, chunk in pairwise(chunks):
        assert 0 < previous.char_end - chunk.char_start <= 100
        assert chunk.content.startswith("Sentence number"), chunk.content[:40]
        assert previous.content.endswith("retrieval."), "cuts fall after a sentence, never inside one"


def test_chinese_splits_after_sentence_punctuation_which_stays_with_its_sentence() -> None:
    text = "".join(f"第{i}句话讲的是知识库的检索与向量化处理流程，需要注意分块大小。" for i in range(30))
    _, chunks = _chunks([Block(text)], 120, 0)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.content.endswith("。"), chunk.content[-10:]
        assert chunk.content.startswith("第")
        assert len(chunk.content) <= 120


def test_chinese_without_sentence_ends_falls_back_to_clauses_then_characters() -> None:
    clauses = "，".join(f"子句{i}内容比较长需要切分" for i in range(40))
    _, chunks = _chunks([Block(clauses)], 50, 0)
    assert all(len(c.content) <= 50 for c in chunks)
    assert all(c.content.endswith(("，", "分")) for c in chunks)
    unbroken = "数" * 130
    _, chunks = _chunks([Block(unbroken)], 50, 0)
    assert [len(c.content) for c in chunks] == [50, 50, 30]


def test_combining_sequences_and_emoji_are_never_cut() -> None:
    text = ("e\u0301" * 30) + ("👍🏽" * 30) + ("👨\u200d👩\u200d👧" * 10)
    _, chunks = _chunks([Block(text)], 7, 0)
    assert "".join(c.content for c in chunks) == text
    for chunk in chunks:
        assert not unicodedata.combining(chunk.content[0])
        assert chunk.content[0] not in ("\U0001f3fd", "\u200d") and chunk.content[-1] != "\u200d"


def test_headings_start_chunks_and_carry_their_path_pages_and_offsets() -> None:
    blocks = [
        Block("Title", kind="heading", heading_path=("Title",), section_break=True),
        Block("Intro", kind="heading", heading_path=("Title", "Intro"), section_break=True),
        Block("Intro text on page one.", page=1, heading_path=("Title", "Intro")),
        Block("More intro on page two.", page=2, heading_path=("Title", "Intro")),
        Block("Usage", kind="heading", heading_path=("Title", "Usage"), section_break=True, page=2),
        Block("Usage text.", page=3, heading_path=("Title", "Usage")),
    ]
    text, chunks = _chunks(blocks, 1000, 100)
    assert [c.content.split("\n\n")[0] for c in chunks] == ["Title", "Usage"], "a title and its subtitle stay together"
    assert chunks[0].heading_path == ("Title", "Intro") and chunks[0].pages == (1, 2)
    assert chunks[1].heading_path == ("Title", "Usage") and chunks[1].pages == (2, 3)
    assert chunks[1].char_start == text.index("Usage"), "no overlap reaches across a heading"


def test_a_code_block_that_fits_is_never_cut_nor_overlapped_into() -> None:
    code = "```python\n" + "\n".join(f"# comment {i}\nx = {i}" for i in range(12)) + "\n```"
    blocks = [Block("Some prose. " * 20), Block(code, kind="code"), Block("After the code. " * 10)]
    _, chunks = _chunks(blocks, len(code) + 40, 60)
    holding = [c for c in chunks if "```python" in c.content]
    assert len(holding) == 1 and code in holding[0].content
    assert not any("x = 11" in c.content and "```python" not in c.content for c in chunks)


def test_rows_and_metadata_ranges_are_recorded() -> None:
    blocks = [Block(f"name: item {i}\nvalue: {i}", kind="row", meta={"row": i + 2}) for i in range(50)]
    _, chunks = _chunks(blocks, 200, 0)
    assert chunks[0].meta["row"] == 2 and chunks[0].meta["row_end"] > 2
    assert all("\nvalue" in c.content or c.content.startswith("value") for c in chunks)
    assert chunks[0].meta["kinds"] == ["row"]


def test_keyword_terms_segment_chinese_into_bigrams_on_both_sides() -> None:
    assert query_terms("知识库检索") == ["知识", "识库", "库检", "检索"]
    assert query_terms("鸭") == ["鸭"]
    assert query_terms("Dense PASSAGE, retrieval!") == ["dense", "passage", "retrieval"]
    doc = document_terms("我们的知识库支持检索。Vector search 也可以")
    assert {"知识", "检索", "vector", "search", "鸭"} - set(doc) == {"鸭"}
    assert "知" in doc, "single characters are indexed too, for one-character queries"
    assert query_terms("ＡＢＣ１２３") == ["abc123"], "full-width forms fold to ASCII"
