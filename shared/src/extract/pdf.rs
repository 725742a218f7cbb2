//! PDF extraction for the extract stage, run in an isolated child process.
//!
//! pdf-extract panics on many malformed PDFs and can overflow its stack on deeply nested ones; a
//! stack overflow aborts the whole process and `catch_unwind` cannot stop it. So the parent
//! ([`extract_in_child`]) never parses PDFs itself: it starts a child (by default the running binary
//! with the hidden [`CHILD_ARG`] argument), which limits its own address space with `RLIMIT_AS`
//! before it reads anything (the limit travels in [`MEMORY_LIMIT_ENV`]); the parent pipes the
//! bytes to its stdin and reads one JSON [`ChildReply`] from its stdout within a deadline. Whatever
//! the child does — panic, abort, overflow, hang, run out of memory — the parent gets a typed
//! [`ExtractError`] and the worker lives on.
//!
//! The child runs with a cleared environment, in its own process group, under address-space,
//! CPU-time, open-file and file-size limits; at most `SLUICE_PDF_MAX_CHILDREN` run at once. It
//! tries a fast content-stream reader, pdf_oxide and pdf-extract in turn ([`engines`]); a child
//! that crashes is run again from the parser after the one that crashed.
//!
//! Test-only fault injection: the environment variable [`FAULT_ENV`]
//! (`SLUICE_PDF_CHILD_FAULT=abort|abort-in:<parser>|stack-overflow|hang|report-env|sigkill:<dir>`)
//! makes the child abort (`abort-in:pdf_oxide`: as it starts that parser, as a crash in it would;
//! a comma-separated list names several),
//! overflow its stack by real recursion, sleep forever, report its environment's names, or mark
//! `<dir>` and SIGKILL itself, after reading its input and before parsing. It exists so tests
//! can prove the parent survives a parser that kills its process; never set it in production.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

mod content_lexer;
mod content_text;
mod engines;
mod font_text;

pub use engines::{ENGINE_ENV, Engine, STARTING};

use super::{ExtractError, ExtractSettings};
use crate::model::ExtractedDoc;

/// Hidden first argument that makes the `sluice` and `sluice-worker` binaries act as the PDF child.
pub const CHILD_ARG: &str = "__extract-pdf";

/// The child's address-space limit in bytes (0 = none), set by the parent. The child applies it
/// itself rather than the parent between fork and exec: a `pre_exec` hook forces a real fork,
/// which copies the page tables of the whole worker for every PDF (it showed as the largest
/// kernel cost in a profile); without one the standard library spawns with `posix_spawn`
/// (vfork semantics) and the worker's memory is never copied.
pub const MEMORY_LIMIT_ENV: &str = "SLUICE_PDF_CHILD_MEMORY_LIMIT";

/// The child's CPU-time limit in whole seconds (0 = none), set by the parent: `RLIMIT_CPU` ends
/// a parser that spins even if the parent's wall-clock timeout could not fire (a frozen parent).
pub const CPU_LIMIT_ENV: &str = "SLUICE_PDF_CHILD_CPU_SECS";

/// Test-only fault injection switch read by the child; see the module docs.
pub const FAULT_ENV: &str = "SLUICE_PDF_CHILD_FAULT";

/// Descriptors the child may hold open: its three standard streams and what the allocator and
/// the standard library need. A parser has no business opening files.
const CHILD_MAX_OPEN_FILES: u64 = 16;

/// Times a child killed by a signal from outside (the OOM killer, a stray SIGTERM to its group) is
/// started again before the document is called crashed.
const SIGNAL_RETRIES: u32 = 1;

/// Largest reply accepted from the child. Extracted text is rarely more than a few times smaller
/// than the PDF; 128 MiB of JSON bounds the parent's memory per document.
const MAX_REPLY_BYTES: u64 = 128 * 1024 * 1024;

/// How much of the child's stderr is kept to explain a crash (the panic or abort message is at the
/// end).
const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// Exit code of a child that could not read its input or write its reply.
const CHILD_IO_FAILURE: i32 = 3;

/// What the child writes to stdout: exactly one JSON object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum ChildReply {
    /// Text per page; `failed_pages` lists pages the parser rejected (skipped, with the reason).
    Ok {
        doc: ExtractedDoc,
        failed_pages: Vec<(u32, String)>,
    },
    /// The parser returned an error or panicked: the file is not a PDF pdf-extract can read.
    Corrupt { detail: String },
    /// The child itself was misused (e.g. an unknown fault name).
    Failed { detail: String },
}

/// The command that runs [`child_main`] from the current binary: `[current_exe, "__extract-pdf"]`.
pub fn default_pdf_command() -> Vec<OsString> {
    let exe = std::env::current_exe()
        .map(OsString::from)
        .or_else(|_| std::env::args_os().next().ok_or(()))
        .unwrap_or_else(|()| OsString::from("sluice"));
    vec![exe, OsString::from(CHILD_ARG)]
}

/// Call first thing in `main` of every binary that may be used as the PDF child: if the first
/// argument is [`CHILD_ARG`], act as the child and exit; otherwise return and let `main` go on.
pub fn run_child_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == CHILD_ARG) {
        child_main();
    }
}

/// The child process: read a PDF from stdin, write a JSON reply to stdout, exit 0. Exits with a
/// non-zero code only if stdin/stdout themselves fail.
pub fn child_main() -> ! {
    let limit = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if let Err(error) = limit_child_resources(limit(MEMORY_LIMIT_ENV), limit(CPU_LIMIT_ENV)) {
        let _ = writeln!(
            io::stderr(),
            "pdf child cannot limit its resources: {error}"
        );
        std::process::exit(CHILD_IO_FAILURE);
    }
    let code = match child_run() {
        Ok(()) => 0,
        Err(error) => {
            // stderr is the only channel left; the parent shows its tail in the crash detail.
            let _ = writeln!(io::stderr(), "pdf child i/o failed: {error}");
            CHILD_IO_FAILURE
        }
    };
    std::process::exit(code)
}

fn child_run() -> io::Result<()> {
    let reply_channel = take_stdout_for_reply()?;
    let mut bytes = Vec::new();
    io::stdin().lock().read_to_end(&mut bytes)?;
    let engine = Engine::from_env();
    let reply = match std::env::var(FAULT_ENV) {
        // A parser that crashes on this document, which the next one reads.
        Ok(fault) if fault.starts_with(ABORT_IN) => engines::parse(&bytes, engine, |parser| {
            if fault[ABORT_IN.len()..]
                .split(',')
                .any(|name| name == parser.name())
            {
                std::process::abort();
            }
        }),
        Ok(fault) => inject_fault(&fault),
        Err(_) => engines::parse(&bytes, engine, |_| {}),
    };
    // Buffered: serde_json writes each token on its own, a syscall apiece on a bare pipe.
    let mut reply_channel = io::BufWriter::with_capacity(64 * 1024, reply_channel);
    serde_json::to_writer(&mut reply_channel, &reply).map_err(io::Error::other)?;
    reply_channel.flush()
}

/// Duplicate fd 1 for the reply and point fd 1 at stderr, so a stray `println!` deep inside a
/// parser dependency cannot corrupt the JSON reply.
fn take_stdout_for_reply() -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    io::stdout().lock().flush()?;
    // SAFETY: plain fd syscalls on the process's own standard descriptors; the duplicated fd is
    // owned by the returned File and nothing else closes it.
    unsafe {
        let reply_fd = libc::dup(1);
        if reply_fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::fs::File::from_raw_fd(reply_fd))
    }
}

/// The fault that aborts the child as it starts any of the named parsers
/// (`abort-in:lopdf-content,pdf_oxide`).
const ABORT_IN: &str = "abort-in:";

fn inject_fault(fault: &str) -> ChildReply {
    match fault {
        "abort" => std::process::abort(),
        "stack-overflow" => {
            let depth = recurse(0);
            ChildReply::Failed {
                detail: format!("recursion ended at depth {depth}"),
            }
        }
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        // What a parser exploit would find: the names of the environment variables.
        "report-env" => ChildReply::Failed {
            detail: std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
        },
        // Killed from outside (the OOM killer): leave a mark in the folder, then SIGKILL itself.
        other if other.starts_with("sigkill:") => {
            let marks = std::path::Path::new(&other["sigkill:".len()..]);
            let _ = std::fs::File::create(marks.join(std::process::id().to_string()));
            // SAFETY: signalling this very process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL ends the process")
        }
        other => ChildReply::Failed {
            detail: format!("unknown {FAULT_ENV} value {other:?}"),
        },
    }
}

/// Real, non-tail recursion with a 4 KiB frame: overflows any stack, as a deeply nested PDF does.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 4096]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(std::hint::black_box(frame)[0])
}

/// Extract a PDF in a child process with the time and memory limits from `settings`. The child
/// is killed on timeout and when this future is dropped, and always reaped. At most
/// `settings.pdf_children` children run at once in this process; a child killed by a signal from
/// outside is started once more before the document counts as crashed.
pub async fn extract_in_child(
    name: &str,
    bytes: bytes::Bytes,
    settings: &ExtractSettings,
) -> Result<ExtractedDoc, ExtractError> {
    let _slot = settings
        .pdf_children
        .acquire()
        .await
        .map_err(|e| ExtractError::Io {
            name: name.to_string(),
            source: io::Error::other(e),
        })?;
    let mut kills_from_outside = 0;
    let mut engine = Engine::Auto;
    loop {
        // The bytes are shared, not copied: a retry needs them again.
        let result = extract_once(name, bytes.clone(), settings, engine).await;
        let Err(ExtractError::Crashed { detail, .. }) = &result else {
            return result;
        };
        if !detail.starts_with(KILLED_BY_SIGNAL) {
            return result;
        }
        if crashed_by_parser(detail) {
            // A parser that brought its process down (a stack overflow aborts) would do so
            // again; the ones after it may not. At most one run per parser.
            let Some(next) = engine.after_crash(detail) else {
                return result;
            };
            tracing::warn!(name, %detail, next = next.as_str(), "pdf child crashed; trying the next parser");
            engine = next;
        } else if kills_from_outside < SIGNAL_RETRIES {
            kills_from_outside += 1;
            tracing::warn!(name, %detail, "pdf child killed by a signal; trying once more");
        } else {
            return result;
        }
    }
}

/// Whether a child's end was its own doing (abort, segmentation fault, bus error) rather than a
/// signal from outside (the OOM killer's SIGKILL, a SIGTERM to its group).
fn crashed_by_parser(detail: &str) -> bool {
    [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL]
        .iter()
        .any(|signal| detail.starts_with(&format!("{KILLED_BY_SIGNAL} {signal} ")))
}

/// How [`describe_failure`] starts the detail of a child that a signal ended.
const KILLED_BY_SIGNAL: &str = "killed by signal";

async fn extract_once(
    name: &str,
    bytes: bytes::Bytes,
    settings: &ExtractSettings,
    engine: Engine,
) -> Result<ExtractedDoc, ExtractError> {
    let io_error = |source: io::Error| ExtractError::Io {
        name: name.to_string(),
        source,
    };
    let (program, args) = settings.pdf_command.split_first().ok_or_else(|| {
        io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pdf_command is empty",
        ))
    })?;
    let mut command = tokio::process::Command::new(program);
    // A cleared environment (a parser exploit finds no cloud keys or database URLs there) and a
    // process group of its own (a signal to the worker's group does not reach it).
    command
        .args(args)
        .env_clear()
        .env(ENGINE_ENV, engine.as_str())
        .env(MEMORY_LIMIT_ENV, settings.pdf_memory_limit.to_string())
        .env(
            CPU_LIMIT_ENV,
            settings.pdf_timeout.as_secs().saturating_add(1).to_string(),
        )
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(fault) = std::env::var(FAULT_ENV) {
        command.env(FAULT_ENV, fault);
    }
    let memory_limit = settings.pdf_memory_limit;
    let started = Instant::now();
    let mut child = command.spawn().map_err(io_error)?;
    let stdin = child.stdin.take();
    // The reply is parsed as it streams in, on a blocking thread, so a large document's text is
    // held once (as the parsed sections) rather than also as the raw JSON.
    let stdout = child
        .stdout
        .take()
        .map(|pipe| pipe.into_owned_fd().map(std::fs::File::from))
        .transpose()
        .map_err(io_error)?;
    let stderr = child.stderr.take();

    let exchange = async {
        let write = async move {
            if let Some(mut stdin) = stdin {
                // A write error means the child died early; its exit status says why.
                let _ = stdin.write_all(&bytes).await;
                let _ = stdin.shutdown().await;
            }
            // The document's bytes are not needed while the child parses them.
            drop(bytes);
        };
        let read = async {
            tokio::task::spawn_blocking(move || read_reply(stdout, MAX_REPLY_BYTES))
                .await
                .unwrap_or_else(|join| ReplyRead::Unreadable(join.to_string()))
        };
        let (_, reply, stderr_tail) =
            tokio::join!(write, read, read_tail(stderr, STDERR_TAIL_BYTES));
        let status = child.wait().await;
        (reply, stderr_tail, status)
    };
    let outcome = tokio::time::timeout(settings.pdf_timeout, exchange).await;
    let Ok((reply, stderr_tail, status)) = outcome else {
        // Kill and reap, so no zombie is left behind (the reply reader then sees end of file).
        let _ = child.kill().await;
        tracing::debug!(name, timeout = ?settings.pdf_timeout, "pdf child killed on timeout");
        return Err(ExtractError::Timeout {
            name: name.to_string(),
            timeout: settings.pdf_timeout,
        });
    };
    let status = status.map_err(io_error)?;
    tracing::debug!(name, elapsed = ?started.elapsed(), %status, "pdf child finished");
    let reply = match reply {
        // Checked before the exit status: the child fails its write once the reader gives up.
        ReplyRead::TooLarge => {
            return Err(ExtractError::Unsupported {
                name: name.to_string(),
                detail: format!(
                    "extracted text exceeds the {} MiB limit",
                    MAX_REPLY_BYTES >> 20
                ),
            });
        }
        ReplyRead::Parsed(reply) => Ok(reply),
        ReplyRead::Unreadable(error) => Err(error),
    };
    if status.signal() == Some(libc::SIGXCPU) {
        return Err(ExtractError::Timeout {
            name: name.to_string(),
            timeout: settings.pdf_timeout,
        });
    }
    if !status.success() {
        let detail = describe_failure(status, &stderr_tail, memory_limit);
        return Err(ExtractError::Crashed {
            name: name.to_string(),
            detail,
        });
    }
    match reply {
        Ok(ChildReply::Ok { doc, failed_pages }) => {
            for (page, error) in &failed_pages {
                tracing::warn!(name, page, %error, "pdf page skipped: the parser could not read it");
            }
            Ok(doc)
        }
        Ok(ChildReply::Corrupt { detail }) => Err(ExtractError::Corrupt {
            name: name.to_string(),
            format: "PDF",
            detail,
        }),
        Ok(ChildReply::Failed { detail }) => Err(ExtractError::Crashed {
            name: name.to_string(),
            detail,
        }),
        Err(error) => Err(ExtractError::Crashed {
            name: name.to_string(),
            detail: format!("unreadable reply from the pdf child: {error}"),
        }),
    }
}

/// The parent's view of the child's stdout.
enum ReplyRead {
    Parsed(ChildReply),
    /// More than the cap arrived; reading stopped there.
    TooLarge,
    Unreadable(String),
}

/// Parse one [`ChildReply`] from the (blocking) pipe, reading at most `cap` bytes. Runs on a
/// blocking thread; ends when the child closes its stdout, including when it is killed.
fn read_reply(pipe: Option<std::fs::File>, cap: u64) -> ReplyRead {
    let Some(pipe) = pipe else {
        return ReplyRead::Unreadable("no stdout pipe".into());
    };
    let mut reader = io::BufReader::with_capacity(64 * 1024, pipe.take(cap + 1));
    let parsed = serde_json::from_reader::<_, ChildReply>(&mut reader);
    if reader.get_ref().limit() == 0 {
        return ReplyRead::TooLarge;
    }
    match parsed {
        Ok(reply) => ReplyRead::Parsed(reply),
        Err(error) => ReplyRead::Unreadable(error.to_string()),
    }
}

/// Runs first in the child: cap the address space, CPU time and open files, forbid writing files
/// and disable core dumps (a crashing parser must not litter the working directory with
/// multi-gigabyte core files).
fn limit_child_resources(memory_limit: u64, cpu_secs: u64) -> io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit with a valid pointer to a stack value.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0, 0)?;
    // Pipes are not files: the reply and stderr still flow.
    set(libc::RLIMIT_FSIZE, 0, 0)?;
    set(
        libc::RLIMIT_NOFILE,
        CHILD_MAX_OPEN_FILES,
        CHILD_MAX_OPEN_FILES,
    )?;
    if memory_limit > 0 {
        set(libc::RLIMIT_AS, memory_limit, memory_limit)?;
    }
    if cpu_secs > 0 {
        // SIGXCPU at the soft limit; the hard limit one second later is SIGKILL.
        set(libc::RLIMIT_CPU, cpu_secs, cpu_secs.saturating_add(1))?;
    }
    Ok(())
}

/// Read to EOF keeping only the last `keep` bytes (reading on so the child never blocks on a full
/// stderr pipe).
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut tail = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// "killed by signal 6 (SIGABRT): memory allocation of 8 bytes failed" and the like.
fn describe_failure(status: ExitStatus, stderr_tail: &str, memory_limit: u64) -> String {
    let mut detail = match (status.signal(), status.code()) {
        (Some(signal), _) => format!("{KILLED_BY_SIGNAL} {signal} ({})", signal_name(signal)),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => format!("ended abnormally ({status})"),
    };
    // The parser the child had started, then the last two other lines (the panic or abort).
    let lines: Vec<&str> = stderr_tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let started = lines.iter().rev().find(|l| l.starts_with(STARTING));
    let mut shown: Vec<&str> = lines
        .iter()
        .rev()
        .filter(|l| !l.starts_with(STARTING))
        .take(2)
        .copied()
        .collect();
    shown.extend(started);
    if !shown.is_empty() {
        let message: String = shown.into_iter().rev().collect::<Vec<_>>().join("; ");
        detail.push_str(": ");
        detail.extend(message.chars().take(300));
    }
    if stderr_tail.contains("memory allocation of") {
        detail.push_str(&format!(" (memory limit {} MiB)", memory_limit >> 20));
    }
    detail
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGXCPU => "SIGXCPU",
        _ => "other signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DocFormat, Section};

    #[test]
    fn crash_detail_names_the_signal_and_message() {
        let status = ExitStatus::from_raw(libc::SIGABRT);
        let detail = describe_failure(
            status,
            "noise\nmemory allocation of 64 bytes failed\n",
            64 << 20,
        );
        assert_eq!(
            detail,
            "killed by signal 6 (SIGABRT): noise; memory allocation of 64 bytes failed (memory limit 64 MiB)"
        );
        let in_a_parser = describe_failure(
            status,
            &format!(
                "{STARTING}pdf_oxide\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow\n"
            ),
            0,
        );
        assert_eq!(
            in_a_parser,
            format!(
                "killed by signal 6 (SIGABRT): {STARTING}pdf_oxide; thread 'main' has overflowed its stack; fatal runtime error: stack overflow"
            )
        );
        assert_eq!(
            Engine::Auto.after_crash(&in_a_parser),
            Some(Engine::PdfExtract)
        );
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe_failure(exited, "", 0), "exited with status 3");
    }

    fn pipe_with(contents: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(contents).unwrap();
        use std::io::Seek;
        file.rewind().unwrap();
        file
    }

    #[test]
    fn reply_is_parsed_from_the_stream() {
        let reply = ChildReply::Ok {
            doc: ExtractedDoc {
                format: DocFormat::Pdf,
                title: Some("Manual".into()),
                sections: vec![Section {
                    text: "page one".into(),
                    page: Some(1),
                }],
            },
            failed_pages: vec![(2, "bad font".into())],
        };
        let json = serde_json::to_vec(&reply).unwrap();
        match read_reply(Some(pipe_with(&json)), json.len() as u64) {
            ReplyRead::Parsed(ChildReply::Ok { doc, failed_pages }) => {
                assert_eq!(doc.sections[0].text, "page one");
                assert_eq!(failed_pages, vec![(2, "bad font".to_string())]);
            }
            _ => panic!("a reply exactly at the cap must parse"),
        }
        assert!(matches!(
            read_reply(Some(pipe_with(&json)), json.len() as u64 - 1),
            ReplyRead::TooLarge
        ));
        assert!(matches!(
            read_reply(Some(pipe_with(b"{\"status\":\"ok\",")), 1 << 20),
            ReplyRead::Unreadable(_)
        ));
    }

    #[test]
    fn default_command_reinvokes_this_binary() {
        let command = default_pdf_command();
        assert_eq!(command.len(), 2);
        assert_eq!(command[1], CHILD_ARG);
        assert_eq!(
            std::path::PathBuf::from(&command[0]),
            std::env::current_exe().unwrap()
        );
    }
}
