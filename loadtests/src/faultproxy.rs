//! A TCP fault proxy for chaos tests: listens on a loopback port and forwards every connection to
//! a target, until told to break the link.
//!
//! - [`FaultProxy::cut`]: every open connection is closed and new ones are accepted and closed at
//!   once — the dependency is "down" (connection refused/reset from the client's point of view).
//! - [`FaultProxy::freeze`]: no byte moves in either direction, connections stay open and new ones
//!   are accepted but not served — a network partition or a hung peer, which only timeouts and
//!   heartbeats notice.
//! - [`FaultProxy::restore`]: back to forwarding.
//! - [`FaultProxy::set_latency`]: every chunk of bytes is held this long before it is passed on,
//!   in both directions — a slow or distant dependency, which widens the windows a crash or a
//!   pause can land in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Forwarding,
    Cut,
    Frozen,
}

struct Shared {
    target: SocketAddr,
    /// Added to every forwarded chunk, microseconds.
    latency_us: std::sync::atomic::AtomicU64,
    state: watch::Sender<LinkState>,
    /// Cancelled by [`FaultProxy::cut`]: closes every connection opened before it.
    generation: Mutex<CancellationToken>,
    /// Per open connection (by the client's address): when bytes last went up (client to
    /// target) and down.
    activity: Mutex<HashMap<SocketAddr, Activity>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    up: Option<Instant>,
    down: Option<Instant>,
}

/// A running proxy; dropping it stops listening and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            latency_us: std::sync::atomic::AtomicU64::new(0),
            state: watch::Sender::new(LinkState::Forwarding),
            generation: Mutex::new(CancellationToken::new()),
            activity: Mutex::new(HashMap::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(FaultProxy { addr, shared, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    pub fn state(&self) -> LinkState {
        *self.shared.state.borrow()
    }

    /// Closes every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.shared.state.send_replace(LinkState::Cut);
        let mut generation = self.shared.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Stops moving bytes without closing anything, until [`Self::restore`].
    pub fn freeze(&self) {
        self.shared.state.send_replace(LinkState::Frozen);
    }

    /// Holds every chunk this long before passing it on (zero: none).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.shared.latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Clients (their side of the connection) that sent something the target has not answered
    /// yet, longest waiting first: who is in the middle of a request right now.
    pub fn awaiting_reply(&self) -> Vec<SocketAddr> {
        let activity = self.shared.activity.lock().unwrap();
        let mut waiting: Vec<(Instant, SocketAddr)> = activity
            .iter()
            .filter_map(|(addr, a)| match (a.up, a.down) {
                (Some(up), Some(down)) if up > down => Some((up, *addr)),
                (Some(up), None) => Some((up, *addr)),
                _ => None,
            })
            .collect();
        waiting.sort();
        waiting.into_iter().map(|(_, addr)| addr).collect()
    }

    /// Forwards again (connections a freeze held resume where they stopped).
    pub fn restore(&self) {
        self.shared.state.send_replace(LinkState::Forwarding);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.generation.lock().unwrap().cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, peer)) = accepted else {
            continue;
        };
        if *shared.state.borrow() == LinkState::Cut {
            drop(client);
            continue;
        }
        let generation = shared.generation.lock().unwrap().clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(client, peer, shared.clone(), generation).await;
            shared.activity.lock().unwrap().remove(&peer);
        });
    }
}

/// One connection: wait out a freeze, connect to the target, pump both ways until either side
/// closes or the connection's generation is cut.
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    generation: CancellationToken,
) {
    let mut state = shared.state.subscribe();
    let connected = async {
        if !wait_forwarding(&mut state).await {
            return None;
        }
        TcpStream::connect(shared.target).await.ok()
    };
    let upstream = tokio::select! {
        _ = generation.cancelled() => return,
        upstream = connected => match upstream {
            Some(upstream) => upstream,
            None => return,
        },
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let pumps = async {
        tokio::join!(
            pump(client_read, upstream_write, &shared, peer, Direction::Up),
            pump(upstream_read, client_write, &shared, peer, Direction::Down),
        )
    };
    tokio::select! {
        _ = generation.cancelled() => {}
        _ = pumps => {}
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

/// Waits until the link forwards; `false` if it was cut instead.
async fn wait_forwarding(state: &mut watch::Receiver<LinkState>) -> bool {
    loop {
        match *state.borrow_and_update() {
            LinkState::Forwarding => return true,
            LinkState::Cut => return false,
            LinkState::Frozen => {}
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction, holding bytes while frozen; on EOF shuts the write side down so the
/// other end sees a half-close, as it would without the proxy.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
    peer: SocketAddr,
    direction: Direction,
) {
    let mut state = shared.state.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_forwarding(&mut state).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        {
            let mut activity = shared.activity.lock().unwrap();
            let entry = activity.entry(peer).or_default();
            match direction {
                Direction::Up => entry.up = Some(Instant::now()),
                Direction::Down => entry.down = Some(Instant::now()),
            }
        }
        let latency = shared.latency_us.load(std::sync::atomic::Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(latency)).await;
        }
        // Bytes read just before a freeze are held, not delivered.
        if !wait_forwarding(&mut state).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(buf)
    }

    /// Reads until the peer closes (Ok(0) or a reset), or gives up after `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");

        proxy.cut();
        assert_eq!(proxy.state(), LinkState::Cut);
        assert!(
            closed_within(&mut a, Duration::from_secs(2)).await,
            "an open connection is closed by a cut"
        );
        // A new connection is accepted by the kernel, then closed at once without a byte.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = b.write_all(b"x").await;
        assert!(closed_within(&mut b, Duration::from_secs(2)).await);

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn freeze_holds_bytes_without_closing() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"one").await.unwrap(), b"one");

        proxy.freeze();
        a.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 3];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), a.read_exact(&mut buf))
                .await
                .is_err(),
            "nothing moves while frozen"
        );
        // A connection opened during the freeze waits too.
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        b.write_all(b"new").await.unwrap();

        proxy.restore();
        tokio::time::timeout(Duration::from_secs(5), a.read_exact(&mut buf))
            .await
            .expect("held bytes delivered after the freeze")
            .unwrap();
        assert_eq!(&buf, b"two");
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"new");
    }

    #[tokio::test]
    async fn a_cut_during_a_freeze_closes_the_held_connections() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"x").await.unwrap(), b"x");
        proxy.freeze();
        proxy.cut();
        assert!(closed_within(&mut a, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn latency_delays_each_way() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_latency(Duration::from_millis(150));
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&mut a, b"slow").await.unwrap(), b"slow");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        proxy.set_latency(Duration::ZERO);
        let t = std::time::Instant::now();
        assert_eq!(round_trip(&mut a, b"fast").await.unwrap(), b"fast");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn knows_which_client_awaits_a_reply() {
        // A target that answers only what ends with a newline.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf[..n].ends_with(b"\n") {
                            let _ = s.write_all(b"ok\n").await;
                        }
                    }
                });
            }
        });
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut answered = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut waiting = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut answered, b"hi\n").await.unwrap();
        waiting.write_all(b"no newline yet").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(proxy.awaiting_reply(), vec![waiting.local_addr().unwrap()]);
        waiting.write_all(b"\n").await.unwrap();
        let mut reply = [0u8; 3];
        waiting.read_exact(&mut reply).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(proxy.awaiting_reply().is_empty());
    }

    #[tokio::test]
    async fn a_closed_target_closes_the_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let proxy = FaultProxy::start(target).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(closed_within(&mut a, Duration::from_secs(2)).await);
    }
}
