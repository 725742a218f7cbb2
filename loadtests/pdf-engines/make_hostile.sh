#!/bin/sh
# Extra broken/hostile PDFs derived from the real corpus (needs qpdf, python3). Run from loadtests/pdf-engines.
set -e
H=corpus/hostile
R=corpus/real
# Encrypted, empty user password (opens for any reader that tries ""): RC4-128 and AES-256.
qpdf --allow-weak-crypto --encrypt "" owner 128 --use-aes=n -- $R/libtasn1.pdf $H/enc-rc4-emptypw.pdf
qpdf --encrypt "" owner 256 -- $R/libtasn1.pdf $H/enc-aes256-emptypw.pdf
# Encrypted with a real user password: must fail cleanly.
qpdf --encrypt secret owner 256 -- $R/libtasn1.pdf $H/enc-aes256-userpw.pdf
python3 - <<'PY'
import re
H = "corpus/hostile"
src = open("corpus/real/libtasn1.pdf", "rb").read()
# startxref points to garbage: readers must rebuild the xref by scanning.
m = list(re.finditer(rb"startxref\s+(\d+)", src))[-1]
open(f"{H}/bad-startxref.pdf", "wb").write(src[:m.start(1)] + b"1" + src[m.end(1):])
# Second half of the file zeroed (a torn download / disk error), size unchanged.
half = len(src) // 2
open(f"{H}/zeroed-half.pdf", "wb").write(src[:half] + b"\0" * (len(src) - half))
# 200,000 nested arrays inside the page dictionary: recursion depth attack.
depth = 200_000
objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Junk " + b"[" * depth + b"]" * depth + b" >>",
        b"<< /Length 44 >>\nstream\nBT /F1 12 Tf 72 720 Td (nested arrays) Tj ET\nendstream"]
out = bytearray(b"%PDF-1.4\n")
offs = []
for i, o in enumerate(objs, 1):
    offs.append(len(out)); out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
x = len(out)
out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
for o in offs: out += b"%010d 00000 n \n" % o
out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, x)
open(f"{H}/deep-nesting.pdf", "wb").write(out)
PY
ls -la $H
