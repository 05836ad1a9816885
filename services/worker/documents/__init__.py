"""Turning a file into text with its structure: blocks (headings, paragraphs,
tables, rows, slides, pages) that the chunker cuts into chunks.

`extract.extract_document` runs in a killable child process (the CPU pool)
and streams blocks to a spool file, so memory stays bounded for long PDFs and
large CSVs; the preprocess stage copies them into PostgreSQL as they come.
Each format is one module; the heavy parsing libraries are imported there,
only in the processes that parse.
"""
