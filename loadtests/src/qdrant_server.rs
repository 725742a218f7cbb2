//! The Qdrant the tests run against: the real server (`../shared/bin/qdrant`, Qdrant 1.18.3) where
//! it exists, the in-process stand-in ([`crate::standin`]) where it does not, so a fresh machine
//! still passes and CI, which has the server, tests against the real thing.
//!
//! Choice: `SLUICE_TEST_QDRANT=standin` forces the stand-in, `=real` demands the server (and fails
//! when it is missing), unset or `auto` takes the server when its binary is found. The binary is
//! `SLUICE_TEST_QDRANT_BIN`, else `<workspace root>/../shared/bin/qdrant` when that file exists.
//!
//! Each server gets free loopback ports and a storage folder of its own, is ready once
//! `GET /readyz` answers 200 and its gRPC port accepts connections, and can be restarted over the same storage and ports (chaos runs
//! restart it behind a fault proxy). Dropping it stops the process (SIGTERM, then SIGKILL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::fleet::free_port;

/// Forces a backend: `standin`, `real` or `auto` (the default).
pub const BACKEND_ENV: &str = "SLUICE_TEST_QDRANT";
/// Path of the Qdrant server binary.
pub const BIN_ENV: &str = "SLUICE_TEST_QDRANT_BIN";
/// How long a (re)started server may take to answer `/readyz` (a few seconds on a busy machine;
/// a restart over a large storage replays its WAL first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Between SIGTERM and SIGKILL when stopping.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The server binary to use, if any: [`BIN_ENV`], else `../shared/bin/qdrant` beside the
/// workspace when it exists.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/qdrant");
    default.is_file().then_some(default)
}

/// Which Qdrant a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The real Qdrant server binary.
    Server,
    /// The qdrant-edge backed stand-in, in this process.
    Standin,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Server => "real Qdrant server",
            Backend::Standin => "Qdrant stand-in",
        }
    }

    /// What [`BACKEND_ENV`] and the binary's presence choose.
    pub fn chosen() -> anyhow::Result<(Backend, Option<PathBuf>)> {
        let wanted = std::env::var(BACKEND_ENV).unwrap_or_default();
        match wanted.as_str() {
            "standin" => Ok((Backend::Standin, None)),
            "real" | "server" => match server_binary() {
                Some(bin) if bin.is_file() => Ok((Backend::Server, Some(bin))),
                Some(bin) => bail!(
                    "{BACKEND_ENV}={wanted} but {} does not exist ({BIN_ENV})",
                    bin.display()
                ),
                None => bail!(
                    "{BACKEND_ENV}={wanted} but no Qdrant binary: set {BIN_ENV} or put it at ../shared/bin/qdrant"
                ),
            },
            "" | "auto" => match server_binary() {
                Some(bin) if bin.is_file() => Ok((Backend::Server, Some(bin))),
                Some(bin) => bail!("{BIN_ENV} names {}, which does not exist", bin.display()),
                None => Ok((Backend::Standin, None)),
            },
            other => bail!("{BACKEND_ENV} must be standin, real or auto, not {other:?}"),
        }
    }
}

/// A real Qdrant server process over storage of its own.
pub struct QdrantServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    http_port: u16,
    grpc_port: u16,
    child: Option<Child>,
}

impl QdrantServer {
    /// Starts `bin` on free loopback ports with a fresh storage folder and waits until ready.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let mut server = QdrantServer {
            bin: bin.to_path_buf(),
            dir: tempfile::Builder::new()
                .prefix("sluice-qdrant-")
                .tempdir()?,
            http_port: free_port(),
            grpc_port: free_port(),
            child: None,
        };
        server.launch().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<grpc port>`, what `QdrantStore::connect` and the workers take.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }

    /// The REST endpoint (`/readyz`, `/collections`, ...).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("qdrant.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let storage = self.storage();
        std::fs::create_dir_all(&storage)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.bin)
            // The server writes relative `./snapshots` and looks for `./config`: keep both in
            // the server's own folder.
            .current_dir(self.dir.path())
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", &storage)
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.path().join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // `/readyz` answers before the gRPC listener is bound, and an accepted connection
            // before the gRPC service answers: wait for a real gRPC health check.
            if readyz(self.http_port).await && self.grpc_answers().await {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "Qdrant ({}) exited with {status} before it was ready:\n{}",
                    self.bin.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                self.stop(true);
                bail!(
                    "Qdrant ({}) not ready within {READY_TIMEOUT:?}:\n{}",
                    self.bin.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process: SIGKILL when `hard` (a crash: only what reached its WAL survives),
    /// else SIGTERM and SIGKILL after [`STOP_GRACE`].
    pub fn stop(&mut self, hard: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !hard {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server (see [`Self::stop`]) and starts it again over the same storage and
    /// ports. A port another process grabbed in between fails the restart.
    pub async fn restart(&mut self, hard: bool) -> anyhow::Result<()> {
        self.stop(hard);
        // The old listening sockets are gone with the process; a bind racing the kernel's
        // cleanup fails once, so try a few times.
        let mut last = None;
        for _ in 0..5 {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.expect("at least one attempt"))
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.stop(false);
    }
}

impl QdrantServer {
    /// A gRPC health check succeeds.
    async fn grpc_answers(&self) -> bool {
        match sluice_shared::store::qdrant::QdrantStore::connect(
            &format!("http://{}", self.grpc_addr()),
            None,
        ) {
            Ok(store) => store.health_check().await.is_ok(),
            Err(_) => false,
        }
    }
}

/// `GET /readyz` answers 200.
async fn readyz(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 16];
        let n = stream.read(&mut head).await?;
        std::io::Result::Ok(
            head[..n].starts_with(b"HTTP/1.1 200") || head[..n].starts_with(b"HTTP/1.0 200"),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// The in-process stand-in, restartable on the same port over the same folder.
struct Standin {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Dropped after the task above (field order), so the shards flush into a folder that exists.
    dir: tempfile::TempDir,
}

impl Standin {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-standin-")
            .tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut standin = Standin {
            addr,
            shutdown: CancellationToken::new(),
            task: None,
            dir,
        };
        standin.serve(listener).await?;
        Ok(standin)
    }

    async fn serve(&mut self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let shards = crate::standin::open_shards(self.dir.path()).await?;
        self.shutdown = CancellationToken::new();
        let token = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move {
            crate::standin::serve(listener, shards, token).await?;
            Ok(())
        }));
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_GRACE, task)
                .await
                .context("the stand-in did not stop in time")???;
        }
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let mut last = None;
        for _ in 0..20 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => return self.serve(listener).await,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.expect("at least one attempt")).context(format!("rebinding {}", self.addr))
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

enum Inner {
    Server(QdrantServer),
    Standin(Standin),
}

/// The Qdrant of one test: see the module docs.
pub struct TestQdrant {
    inner: Inner,
}

impl TestQdrant {
    /// Starts what [`Backend::chosen`] picks.
    pub async fn start() -> anyhow::Result<Self> {
        let (backend, bin) = Backend::chosen()?;
        let inner = match backend {
            Backend::Server => Inner::Server(
                QdrantServer::start(&bin.expect("a binary for the server backend")).await?,
            ),
            Backend::Standin => Inner::Standin(Standin::start().await?),
        };
        Ok(TestQdrant { inner })
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Server(_) => Backend::Server,
            Inner::Standin(_) => Backend::Standin,
        }
    }

    /// gRPC address (the one `QdrantStore` and the workers use).
    pub fn addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Server(s) => s.grpc_addr(),
            Inner::Standin(s) => s.addr,
        }
    }

    /// `http://ADDR` of the gRPC endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The real server, when this is one (its REST URL, storage, ...).
    pub fn server(&self) -> Option<&QdrantServer> {
        match &self.inner {
            Inner::Server(s) => Some(s),
            Inner::Standin(_) => None,
        }
    }

    /// Restarts over the same storage and address. The server is killed (`hard`) or stopped
    /// with SIGTERM; the in-process stand-in always shuts down cleanly (its writes are flushed
    /// before each reply, so a kill would lose nothing more).
    pub async fn restart(&mut self, hard: bool) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Server(s) => s.restart(hard).await,
            Inner::Standin(s) => s.restart().await,
        }
    }

    /// Stops it and waits (the stand-in flushes its shards; the server gets SIGTERM).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match &mut self.inner {
            Inner::Server(s) => {
                s.stop(false);
                Ok(())
            }
            Inner::Standin(s) => s.stop().await,
        }
    }
}

/// The Qdrant for a test rig: [`TestQdrant::start`], announced on stderr so a test's output says
/// which one it ran against. Panics with the reason when it cannot start.
pub async fn test_qdrant() -> TestQdrant {
    let qdrant = TestQdrant::start()
        .await
        .unwrap_or_else(|e| panic!("starting the test Qdrant: {e:#}"));
    eprintln!(
        "test Qdrant: {} at {} (set {BACKEND_ENV}=standin or =real to choose)",
        qdrant.backend().as_str(),
        qdrant.url()
    );
    qdrant
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real server starts, answers, restarts over its storage and stops; skipped (with a
    /// message) where no binary exists, which `Backend::chosen` makes explicit.
    #[tokio::test]
    async fn server_restarts_over_its_storage() {
        let Some(bin) = server_binary() else {
            eprintln!("no Qdrant server binary here; the stand-in is covered by its own tests");
            return;
        };
        let mut server = QdrantServer::start(&bin).await.unwrap();
        let (url, storage) = (server.grpc_url(), server.storage());
        assert!(readyz(server.http_port).await);
        server.restart(true).await.unwrap();
        assert_eq!(server.grpc_url(), url);
        assert!(readyz(server.http_port).await);
        assert!(storage.join("collections").is_dir());
        let pid = server.child.as_ref().unwrap().id();
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dropping the server stops (and reaps) the process"
        );
    }
}
