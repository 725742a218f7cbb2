#!/usr/bin/env python3
"""Summarise analysed records (driver.py report output) as markdown: report.py REAL.jsonl HOSTILE.jsonl"""
import json, statistics, sys

real = [json.loads(l) for l in open(sys.argv[1])]
hostile = [json.loads(l) for l in open(sys.argv[2])] if len(sys.argv) > 2 else []
engines = list(dict.fromkeys(r["engine"] for r in real))
MB = 1e6

print("## Real corpus (per engine)\n")
print("| engine | files OK / failed | total CPU s | CPU s per MB | max peak RSS MiB | word recall median / mean / min | bigram order median / mean / min | word precision mean | panics / crashes |")
print("|---|---|---|---|---|---|---|---|---|")
for e in engines:
    rs = [r for r in real if r["engine"] == e]
    ok = sum(r["ok"] for r in rs)
    cpu = sum(r["cpu_s"] for r in rs)
    mb = sum(r["bytes"] for r in rs) / MB
    rss = max(r["peak_rss_mib"] for r in rs)
    fids = [r["fidelity"] for r in rs if r.get("fidelity")]
    rec = [f["recall"] for f in fids]
    order = [f["order"] for f in fids if f["order"] is not None]
    prec = [f["precision"] for f in fids]
    crashes = sum(r["panicked"] or r["exit"] != "code 0" for r in rs)
    print(f"| {e} | {ok} / {len(rs) - ok} | {cpu:.1f} | {cpu / mb:.2f} | {rss:.0f} | "
          f"{statistics.median(rec):.3f} / {statistics.mean(rec):.3f} / {min(rec):.3f} | "
          f"{statistics.median(order):.3f} / {statistics.mean(order):.3f} / {min(order):.3f} | "
          f"{statistics.mean(prec):.3f} | {crashes} |")

print("\n## Real corpus (per file): CPU s / peak RSS MiB / recall / order\n")
files = list(dict.fromkeys(r["file"] for r in real))
print("| file | MB | pages | producer | " + " | ".join(engines) + " |")
print("|---|---|---|---|" + "---|" * len(engines))
for f in files:
    rs = {r["engine"]: r for r in real if r["file"] == f}
    any_r = next(iter(rs.values()))
    cells = []
    for e in engines:
        r = rs[e]
        fid = r.get("fidelity")
        q = f"{fid['recall']:.3f} / {fid['order']:.3f}" if fid else "n/a (no ref text)"
        cells.append(f"{r['cpu_s']:.2f} s / {r['peak_rss_mib']:.0f} / {q}" if r["ok"] else f"FAIL: {r['error'][:60]}")
    ref = any_r.get("ref", {})
    print(f"| {f} | {any_r['bytes'] / MB:.2f} | {ref.get('pages', '?')} | {ref.get('producer', '?')} | " + " | ".join(cells) + " |")

if hostile:
    print("\n## Broken / hostile / large files (2 GiB RLIMIT_AS, 300 s timeout)\n")
    print("| file | MB | " + " | ".join(engines) + " |")
    print("|---|---|" + "---|" * len(engines))
    for f in dict.fromkeys(r["file"] for r in hostile):
        rs = {r["engine"]: r for r in hostile if r["file"] == f}
        any_r = next(iter(rs.values()))
        cells = []
        for e in engines:
            r = rs.get(e)
            if r is None:
                cells.append("-"); continue
            rss = f"{r['peak_rss_mib']:.0f}{'' if r['peak_rss_exact'] else '*'} MiB"
            if r["ok"]:
                fid = r.get("fidelity")
                q = f", recall {fid['recall']:.3f}, order {fid['order']:.3f}" if fid else ""
                fp = f", {r['failed_pages']} failed pages" if r.get("failed_pages") else ""
                what = f"OK {r['pages']} pages, {r['chars']} chars{fp}{q}"
            else:
                what = f"{'PANIC ' if r['panicked'] else ''}ERR `{(r['error'] or '')[:80]}`"
                if r["exit"] != "code 0":
                    tail = r.get("stderr_tail", "").strip().splitlines()
                    what += f" ({r['exit']}{': ' + tail[-1][:60] if tail else ''})"
            cells.append(f"{what}; {r['cpu_s']:.2f} s CPU, {r['wall_s']:.1f} s wall, {rss}")
        print(f"| {f} | {any_r['bytes'] / MB:.2f} | " + " | ".join(cells) + " |")
    print("\n`*` = peak RSS from the parent's ru_maxrss (child died without reporting its own VmHWM); includes ~10 MiB inherited from the Python driver.")
