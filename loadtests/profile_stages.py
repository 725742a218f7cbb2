#!/usr/bin/env python3
"""Where `sluice ingest` spends its CPU, by pipeline stage, from `perf script` output.

Reads `perf script -F pid,ip,sym` (call stacks, innermost frame first) on stdin. Each sample is
charged to the stage of the innermost frame that belongs to a known crate or module, so a memcpy
inside the chunker is the chunker's and a syscall made by SQLite is the metadata store's. Samples
of processes other than the first one seen (the PDF children) are PDF extraction. Prints one line
per stage: share of samples and, given the run's CPU seconds and chunks, CPU-s and CPU-s per
1,000 chunks. `--folded FILE` also writes the stacks folded for a flame graph (inferno,
flamegraph.pl).

Usage: perf script -F pid,ip,sym | profile_stages.py --cpu-secs 9.3 --chunks 12000 [--folded F]
"""

import argparse
import collections
import re
import sys

# (stage, pattern on a demangled symbol), tried in order on each frame from the innermost out.
STAGES = [
    ("extract: PDF", r"extract::pdf|pdf_oxide|pdf_extract|lopdf|flate2|miniz_oxide|zune_inflate"),
    ("extract: HTML", r"extract::html|scraper|html5ever|markup5ever|selectors::|cssparser|tendril"),
    ("extract: text, Markdown", r"extract::text|extract::sniff|extract::|chardetng|encoding_rs"),
    ("chunk + tokenise", r"sluice_shared::chunk|text_splitter|bpe_openai|bpe::|regex_automata|pulldown_cmark|unicode_segmentation"),
    # BM25 vectors are qdrant-edge's inference (tokenise, stem, hash) called from embed::bm25;
    # its tokenizer lives under qdrant-edge's segment module, which the store pattern would take.
    ("BM25", r"embed::bm25|bm25_embed|EdgeBm25|qdrant_rust_stemmers|full_text_index::tokenizers"),
    ("embed client", r"sluice_shared::embed|reqwest|hyper|\bh2::|rustls|aws_lc|\bring::"),
    ("store (qdrant-edge)", r"sluice_shared::store|qdrant_edge|segment::|shard::|sparse::|gridstore|wal::|memmap|bitvec|rocksdb"),
    ("metadata (SQLite)", r"sluice_shared::metadata|sqlx|sqlite3|libsqlite3"),
    ("read + hash", r"sluice_shared::source|object_store|sha2|walkdir"),
    ("async runtime", r"tokio::|futures_util|mio::|parking_lot|crossbeam"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]


def samples(lines):
    """Yields (pid, [symbols innermost first]) per sample of `perf script -F pid,ip,sym`."""
    pid, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if pid is not None:
                yield pid, frames
            pid, frames = None, []
            continue
        if pid is None:
            head = line.split()
            pid = head[0] if head else "?"
            continue
        parts = line.strip().split(None, 1)
        frames.append(parts[1] if len(parts) > 1 else "[unknown]")
    if pid is not None:
        yield pid, frames


def stage_of(pid, main_pid, frames):
    for frame in frames:
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    if pid != main_pid:
        return "extract: PDF"
    return "other (allocator, kernel, unresolved)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-secs", type=float, help="CPU seconds of the run (sluice and children)")
    parser.add_argument("--chunks", type=int, help="chunks the run indexed")
    parser.add_argument("--folded", help="write folded stacks here")
    args = parser.parse_args()

    counts = collections.Counter()
    folded = collections.Counter()
    main_pid = None
    for pid, frames in samples(sys.stdin):
        if main_pid is None:
            main_pid = pid
        stage = stage_of(pid, main_pid, frames)
        # PDF children's frames are charged to PDF even when a frame names another crate.
        if pid != main_pid:
            stage = "extract: PDF"
        counts[stage] += 1
        if args.folded:
            folded[";".join([stage] + [re.sub(r"[; ]", "_", f) for f in reversed(frames)])] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples on stdin")
    print(f"{'stage':<40} {'samples':>8} {'share':>7} {'CPU-s':>8} {'CPU-s/1k chunks':>16}")
    order = [name for name, _ in STAGES] + ["other (allocator, kernel, unresolved)"]
    for name in order:
        n = counts.get(name, 0)
        share = n / total
        cpu = f"{share * args.cpu_secs:8.2f}" if args.cpu_secs else f"{'':>8}"
        per_1k = (
            f"{share * args.cpu_secs * 1000 / args.chunks:16.3f}"
            if args.cpu_secs and args.chunks
            else f"{'':>16}"
        )
        print(f"{name:<40} {n:>8} {100 * share:>6.1f}% {cpu} {per_1k}")
    print(f"{'total':<40} {total:>8} {100.0:>6.1f}%")
    if args.folded:
        with open(args.folded, "w") as out:
            for stack, n in folded.most_common():
                out.write(f"{stack} {n}\n")


if __name__ == "__main__":
    main()
