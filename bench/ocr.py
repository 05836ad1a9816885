"""`python -m bench.ocr`: OCR pages per second on one core, per language set.

Runs the parsing step (services.worker.documents) on the corpus's scanned PDF
(one 1700x2200 page) as the preprocess worker's child does, best of N runs,
and prints pages/s and the peak RSS of the Tesseract processes.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from services.worker.documents.extract import ExtractionJob, extract_document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr", description=__doc__)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("CORPUS_DIR", "../shared/corpus")))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--languages", default="eng,chi_sim+eng,chi_sim+chi_tra+eng")
    args = parser.parse_args(argv)
    scan = args.corpus / "pdf-scanned-image-only.pdf"
    if not scan.exists():
        parser.error(f"{scan} not found (set CORPUS_DIR or --corpus)")
    print(f"{'languages':<24} {'s/page':>7} {'pages/s':>8} {'chars':>6}")
    with tempfile.TemporaryDirectory() as work:
        for languages in args.languages.split(","):
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                summary = extract_document(ExtractionJob(str(scan), scan.name, f"{work}/spool.jsonl", 200 << 20,
                                                         10**7, ocr_languages=languages))
                times.append(time.perf_counter() - started)
            best = min(times) / (summary.pages or 1)
            print(f"{languages:<24} {best:>7.2f} {1 / best:>8.2f} {summary.characters:>6}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of a tesseract process: {rss:.0f} MB; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
