//! Stand-alone PDF extraction child: reads a PDF on stdin and writes one JSON reply on stdout (see
//! `sluice_shared::extract::pdf`). The `sluice` and `sluice-worker` binaries embed the same entry
//! point behind a hidden argument; this binary exists so the library's own tests (and anyone who
//! wants a separately sandboxed extractor) have a child program to run.

fn main() {
    sluice_shared::extract::pdf::child_main()
}
