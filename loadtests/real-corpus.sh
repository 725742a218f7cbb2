#!/usr/bin/env bash
# Assembles a corpus of real documents from what a Debian machine with a Rust toolchain has, one flat
# folder for `sluice-bench --corpus DIR` (and LlamaIndex or any other pipeline to compare with):
#   - PDF manuals from Debian documentation packages (downloaded with apt-get, unpacked, not installed)
#   - the HTML chapters of the Rust book shipped with the toolchain (rustup's rust-docs)
#   - README.md files from the cargo registry cache
#   - licence texts from /usr/share/common-licenses
# Usage: loadtests/real-corpus.sh DIR [READMES]   (READMES: how many, default 353)
set -euo pipefail
out=${1:?usage: real-corpus.sh DIR [READMES]}
readmes=${2:-353}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# PDFs: manuals of different producers (TeX, Texinfo, DocBook, Ghostscript, LibreOffice).
pdf_packages="debian-reference-en gnuplot-doc octave-doc maxima-doc scons-doc xfig-doc
  ghostscript-doc asymptote-doc gmsh-doc"
(cd "$work" && apt-get download $pdf_packages >/dev/null 2>&1) ||
  echo "real-corpus: some documentation packages could not be downloaded" >&2
for deb in "$work"/*.deb; do
  [ -e "$deb" ] || continue
  dpkg -x "$deb" "$work/root"
done
count=0
while IFS= read -r -d '' pdf; do
  # Small PDFs (reference cards, one-page releases) and duplicates add nothing.
  [ "$(stat -c %s "$pdf")" -ge 200000 ] || continue
  cp -n "$pdf" "$out/$(basename "$pdf")"
  count=$((count + 1))
done < <(find "$work/root" -name '*.pdf' -print0 2>/dev/null | sort -z)
# Compressed manuals (*.pdf.gz) are common in Debian's doc packages.
while IFS= read -r -d '' gz; do
  name=$(basename "$gz" .gz)
  [ -e "$out/$name" ] && continue
  gunzip -c "$gz" >"$out/$name"
  count=$((count + 1))
done < <(find "$work/root" -name '*.pdf.gz' -print0 2>/dev/null | sort -z)
echo "real-corpus: $count PDFs" >&2

book=$(ls -d "$HOME"/.rustup/toolchains/*/share/doc/rust/html/book 2>/dev/null | head -n1 || true)
if [ -n "$book" ]; then
  n=0
  for html in "$book"/ch*.html "$book"/appendix*.html; do
    [ -e "$html" ] || continue
    cp "$html" "$out/rust-book-$(basename "$html")"
    n=$((n + 1))
  done
  echo "real-corpus: $n HTML chapters of the Rust book" >&2
else
  echo "real-corpus: no Rust book (rustup component add rust-docs)" >&2
fi

n=0
while IFS= read -r -d '' readme; do
  crate=$(basename "$(dirname "$readme")")
  cp "$readme" "$out/readme-$crate.md"
  n=$((n + 1))
  [ "$n" -ge "$readmes" ] && break
done < <(find "$HOME"/.cargo/registry/src -mindepth 3 -maxdepth 3 -name README.md -print0 2>/dev/null | sort -z)
echo "real-corpus: $n READMEs from the cargo registry" >&2

n=0
for licence in GPL-3 Apache-2.0 MPL-2.0 LGPL-2.1; do
  if [ -e "/usr/share/common-licenses/$licence" ]; then
    cp "/usr/share/common-licenses/$licence" "$out/licence-$licence.txt"
    n=$((n + 1))
  fi
done
echo "real-corpus: $n licence texts" >&2
echo "real-corpus: $(ls "$out" | wc -l) files, $(du -sh "$out" | cut -f1) in $out" >&2
