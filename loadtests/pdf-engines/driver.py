#!/usr/bin/env python3
"""Run every engine on every PDF, each in its own process, and compare.

Usage: driver.py run [--engines pdf-extract,pdf_oxide,lopdf] [--timeout 300] [--mem-gib 2]
                     [--repeat 1] --out runs.jsonl FILE_OR_DIR...
       (engine `sluice:ENGINE`: sluice's own PDF child, `$SLUICE_BIN __extract-pdf`, started at
        ENGINE = auto | pdf_oxide | pdf-extract, with its rlimits off; no pdfcmp build needed)
       driver.py report --out analysed.jsonl runs.jsonl...

Per run: CPU time (user+sys of the child, from wait4 rusage), wall time, exit status, the
child's JSON reply, and peak RSS: the child's own VmHWM right after parsing (exact; the
ru_maxrss a parent sees after fork+exec starts at the forking process's RSS, so it is kept only
as a fallback for children that die without replying, marked with *). The child runs with RLIMIT_AS = --mem-gib (like sluice's
PDF child) and is SIGKILLed after --timeout seconds of wall time.

Fidelity against `pdftotext FILE -` (poppler, reading-order mode, no -layout):
  * words: NFKC-normalised, lowercased, maximal runs of Unicode letters/digits;
  * recall    = multiset overlap of words / reference word count;
  * precision = multiset overlap of words / engine word count;
  * order     = multiset overlap of consecutive word pairs (bigrams) / reference bigram count,
    over the whole document (pages concatenated in page order).
"""
import argparse, collections, json, os, re, resource, shutil, signal, subprocess, sys, threading
import time, unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "target", "release", "pdfcmp")
SLUICE_BIN = os.environ.get("SLUICE_BIN", "sluice")
REF_DIR = os.path.join(HERE, "corpus", "ref")
WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text):
    return WORD.findall(unicodedata.normalize("NFKC", text).lower())


def overlap(ref, got):
    rc, gc = collections.Counter(ref), collections.Counter(got)
    return sum(min(n, gc[k]) for k, n in rc.items())


def fidelity(ref_words, got_words):
    if not ref_words:
        return None
    rb = list(zip(ref_words, ref_words[1:]))
    gb = list(zip(got_words, got_words[1:]))
    return {
        "ref_words": len(ref_words),
        "words": len(got_words),
        "recall": overlap(ref_words, got_words) / len(ref_words),
        "precision": overlap(ref_words, got_words) / len(got_words) if got_words else 0.0,
        "order": overlap(rb, gb) / len(rb) if rb else None,
    }


def reference(path):
    os.makedirs(REF_DIR, exist_ok=True)
    out = os.path.join(REF_DIR, os.path.basename(path) + ".txt")
    meta = out + ".meta.json"
    if not os.path.exists(meta):
        t0 = time.time()
        r = subprocess.run(["pdftotext", path, out], capture_output=True, timeout=600)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        info = {"rc": r.returncode, "stderr": r.stderr.decode(errors="replace")[-300:],
                "wall_s": time.time() - t0}
        pi = subprocess.run(["pdfinfo", path], capture_output=True)
        for line in pi.stdout.decode(errors="replace").splitlines():
            k, _, v = line.partition(":")
            if k in ("Pages", "Producer", "Creator"):
                info[k.lower()] = v.strip()
        with open(meta, "w") as f:
            json.dump(info, f)
    info = json.load(open(meta))
    text = open(out, errors="replace").read() if os.path.exists(out) and info["rc"] == 0 else None
    return text, info


def self_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def run(engine, path, timeout, mem_bytes):
    """One child run. Records resources only: the reply is parsed later (`report`), so this
    process stays small — a forked child's ru_maxrss starts at the RSS of the process that forked
    it, which is why the child also reports its own VmHWM."""
    out_path = os.path.join(HERE, "runs", f"{engine}__{os.path.basename(path)}.json")
    err_path = out_path + ".stderr"
    os.makedirs(os.path.dirname(out_path), exist_ok=True)

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        os.setpgid(0, 0)

    floor = self_rss_mib()
    with open(out_path, "wb") as so, open(err_path, "wb") as se:
        t0 = time.time()
        if engine.startswith("sluice:"):
            # The child forbids itself to write files (RLIMIT_FSIZE 0): it talks through pipes.
            env = {"SLUICE_PDF_CHILD_ENGINE": engine.split(":", 1)[1]}
            p = subprocess.Popen([SLUICE_BIN, "__extract-pdf"], stdin=open(path, "rb"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=limits, env=env)
            copiers = [threading.Thread(target=shutil.copyfileobj, args=pair)
                       for pair in ((p.stdout, so), (p.stderr, se))]
            for copier in copiers:
                copier.start()
        else:
            p = subprocess.Popen([BIN, engine, path], stdout=so, stderr=se, preexec_fn=limits)
            copiers = []
        timed_out = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - t0 > timeout:
                os.killpg(p.pid, signal.SIGKILL)
                timed_out = True
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        p.returncode = 0  # reaped by wait4 already; stop Popen from waiting again
        wall = time.time() - t0
        for copier in copiers:
            copier.join()
    return {
        "engine": engine, "file": os.path.basename(path), "path": path,
        "bytes": os.path.getsize(path), "reply": out_path,
        "cpu_s": ru.ru_utime + ru.ru_stime, "ru_maxrss_mib": ru.ru_maxrss / 1024,
        "fork_floor_mib": floor, "wall_s": wall, "timed_out": timed_out,
        "exit": (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                 else f"code {os.WEXITSTATUS(status)}"),
    }


def from_sluice_child(reply):
    """sluice's child reply (`{"status": "ok", "doc": ..., "failed_pages": ...}`) in pdfcmp's shape."""
    if reply["status"] != "ok":
        return {"error": reply.get("detail") or reply["status"], "panicked": False, "pages": 0,
                "failed_pages": [], "chars": 0, "title": None, "text_per_page": []}
    sections = reply["doc"]["sections"]
    return {"error": None, "panicked": False, "pages": len(sections) + len(reply["failed_pages"]),
            "failed_pages": reply["failed_pages"], "title": reply["doc"].get("title"),
            "chars": sum(len(s["text"]) for s in sections),
            "text_per_page": [[s.get("page"), s["text"]] for s in sections]}


def analyse(rec):
    """Parse the child's reply and add outcome and fidelity to a run record."""
    reply = None
    try:
        with open(rec["reply"]) as f:
            reply = json.load(f)
    except (OSError, ValueError):
        pass
    if reply is not None and "status" in reply:
        reply = from_sluice_child(reply)
    tail = open(rec["reply"] + ".stderr", errors="replace").read()[-400:]
    ref_text, ref_info = reference(rec["path"])
    rec["ref"] = ref_info
    if reply is None:
        rec.update(ok=False, panicked=False, stderr_tail=tail,
                   error=("timeout" if rec["timed_out"] else f"no reply ({rec['exit']})"),
                   peak_rss_mib=rec["ru_maxrss_mib"], peak_rss_exact=False)
        return rec
    hwm = reply.get("parse_peak_rss_kib")
    rec.update(ok=reply["error"] is None, error=reply["error"], panicked=reply["panicked"],
               pages=reply["pages"], failed_pages=len(reply["failed_pages"]),
               first_failed=reply["failed_pages"][:1], chars=reply["chars"], title=reply["title"],
               parse_cpu_s=reply.get("parse_cpu_s"), stderr_tail=tail if reply["error"] else "",
               peak_rss_mib=(hwm / 1024 if hwm else rec["ru_maxrss_mib"]),
               peak_rss_exact=bool(hwm))
    if reply["error"] is None and ref_text is not None:
        ref_words = words(ref_text)
        text = "\n".join(t for _, t in reply["text_per_page"])
        if ref_words:
            rec["fidelity"] = fidelity(ref_words, words(text))
    return rec


def cmd_run(a):
    files = []
    for p in a.paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".pdf"))
        else:
            files.append(p)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "a") as out:
        for path in files:
            for engine in a.engines.split(","):
                best = None
                for _ in range(a.repeat):
                    rec = run(engine, path, a.timeout, int(a.mem_gib * (1 << 30)))
                    if best is None or rec["cpu_s"] < best["cpu_s"]:
                        best = rec
                out.write(json.dumps(best) + "\n")
                out.flush()
                print(f"{best['file']:34} {engine:11} cpu={best['cpu_s']:7.2f}s "
                      f"wall={best['wall_s']:7.2f}s exit={best['exit']}", flush=True)


def cmd_report(a):
    recs = []
    for path in a.paths:
        with open(path) as f:
            recs += [analyse(json.loads(line)) for line in f if line.strip()]
    with open(a.out, "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    for rec in recs:
        fid = rec.get("fidelity") or {}
        print(f"{rec['file']:34} {rec['engine']:11} ok={rec['ok']!s:5} cpu={rec['cpu_s']:7.2f}s "
              f"rss={rec['peak_rss_mib']:7.1f}MiB{'' if rec['peak_rss_exact'] else '*'} "
              f"pages={rec.get('pages')} recall={fid.get('recall', float('nan')):.3f} "
              f"order={fid.get('order') or float('nan'):.3f} err={(rec['error'] or '')[:100]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run engines on files, record CPU/RSS/exit per run")
    r.add_argument("--engines", default="pdf-extract,pdf_oxide,lopdf")
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("--mem-gib", type=float, default=2)
    r.add_argument("--repeat", type=int, default=1, help="runs per pair; the one with least CPU is kept")
    r.add_argument("--out", required=True, help="JSON-lines file to append run records to")
    r.add_argument("paths", nargs="+", help="PDF files or folders of them")
    p = sub.add_parser("report", help="parse replies, score fidelity against pdftotext")
    p.add_argument("--out", required=True, help="JSON-lines file of analysed records")
    p.add_argument("paths", nargs="+", help="run-record files written by `run`")
    a = ap.parse_args()
    (cmd_run if a.cmd == "run" else cmd_report)(a)


if __name__ == "__main__":
    main()
