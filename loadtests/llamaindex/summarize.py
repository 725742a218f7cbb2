#!/usr/bin/env python3
"""Builds results.json (raw runs + medians per corpus and store) from the runs*.jsonl files
that run.sh wrote. Usage: python3 summarize.py [runs.jsonl ...]"""
import json
import os
import statistics
import sys

here = os.path.dirname(os.path.abspath(__file__))
files = sys.argv[1:] or [os.path.join(here, f) for f in ("runs.jsonl", "runs-in-memory.jsonl")]
runs = []
for f in files:
    if os.path.exists(f):
        runs += [json.loads(line) for line in open(f) if line.strip()]

fields = ["chunks", "tokens_cl100k", "cpu_secs", "cpu_secs_per_1k_chunks", "cpu_secs_imports",
          "cpu_secs_read_extract", "cpu_secs_split_embed_store",
          "cpu_secs_per_1k_chunks_excl_imports", "wall_secs", "peak_rss_mb", "emulator_cpu_secs"]
groups = {}
for r in runs:
    if r.get("failed"):
        continue
    groups.setdefault((r["store"], r["corpus"]), []).append(r)
medians = []
for (store, corpus), rs in groups.items():
    m = {"store": store, "corpus": corpus, "runs": len(rs),
         "max_loadavg_1m": max(max(r["loadavg_1m_start"], r["loadavg_1m_end"]) for r in rs)}
    for k in fields:
        vals = [r[k] for r in rs if r.get(k) is not None]
        m[k] = round(statistics.median(vals), 3) if vals else None
    m["cpu_secs_per_mb"] = round(m["cpu_secs"] / (sum(
        os.path.getsize(os.path.join(corpus, n)) for n in os.listdir(corpus)) / 1e6), 3)
    medians.append(m)

out = {
    "what": "LlamaIndex CPU cost of ingesting the real corpora (loadtests/llamaindex/ingest.py), "
            "sequential, provider emulator at zero latency; CPU = getrusage SELF+CHILDREN of the "
            "Python process, emulator excluded (its CPU is emulator_cpu_secs)",
    "versions": runs[0]["versions"] if runs else None,
    "python": runs[0]["python"] if runs else None,
    "medians": medians,
    "failed": [r for r in runs if r.get("failed")],
    "runs": runs,
}
json.dump(out, open(os.path.join(here, "results.json"), "w"), indent=1)
for m in medians:
    print(f'{m["store"][:6]:6} {os.path.basename(m["corpus"]):13} n={m["runs"]} chunks={m["chunks"]} '
          f'cpu={m["cpu_secs"]} per1k={m["cpu_secs_per_1k_chunks"]} wall={m["wall_secs"]} '
          f'rss={m["peak_rss_mb"]} read={m["cpu_secs_read_extract"]} '
          f'split+embed+store={m["cpu_secs_split_embed_store"]} perMB={m["cpu_secs_per_mb"]} '
          f'load<={m["max_loadavg_1m"]}')
