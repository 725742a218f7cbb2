#!/bin/sh
# Fetch the real-PDF corpus from Debian documentation packages (no install: apt-get download +
# dpkg -x), plus PDFs already on a stock machine. Run from loadtests/pdf-engines as root after apt-get update.
set -e
mkdir -p corpus/debs corpus/real corpus/hostile
cd corpus/debs
apt-get download gnuplot-doc asymptote-doc octave-doc gmsh-doc maxima-doc scons-doc xfig-doc \
  debian-reference-en ghostscript-doc sqlite3-doc
cd ..
rm -rf x && mkdir x
for d in debs/*.deb; do dpkg -x "$d" x; done
find x -name '*.pdf*' -size +1k | while read -r f; do
  b=$(basename "$f")
  case "$b" in *.gz) gunzip -c "$f" > "real/${b%.gz}" ;; *) cp "$f" real/ ;; esac
done
rm -rf x real/refcard-legal.pdf real/refcard-letter.pdf
# Shipped on the base image (libtasn1-doc, shared-mime-info) when present.
for f in /usr/share/doc/libtasn1-doc/libtasn1.pdf /usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf; do
  [ -f "$f" ] && cp "$f" real/
done
# A real PDF cut at 100 KiB (zlib-rs test data, in the cargo registry once pdfcmp is built).
p=$(ls ~/.cargo/registry/src/*/zlib-rs-*/src/deflate/test-data/paper-100k.pdf 2>/dev/null | head -1)
[ -n "$p" ] && cp "$p" hostile/paper-100k-truncated.pdf
# sluice's failure fixtures.
cp ../../../shared/tests/fixtures/truncated.pdf ../../../shared/tests/fixtures/inflate-bomb.pdf \
   ../../../shared/tests/fixtures/not-a-pdf.pdf ../../../shared/tests/fixtures/multipage.pdf \
   ../../../shared/tests/fixtures/html-named.pdf hostile/
