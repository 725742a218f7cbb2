//! SIGINT/SIGTERM for every long-running command: the first cancels a token the command's loops
//! watch (stop intake, finish or hand back what is in flight); what a second one does is the
//! command's choice ([`Signals`] keeps listening).

use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The stop signals a command reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// 128 + the signal number, as shells report a process killed by it.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "Ctrl-C (SIGINT)",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM handlers, installed together.
pub struct Signals {
    interrupt: UnixSignal,
    terminate: UnixSignal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM, logging `stopping` ("stopping intake")
/// with the signal's name. The handlers are installed before this returns, so a signal that comes
/// right after start-up is not lost to the default action; without them the process can only be
/// killed: said once, loudly. Call from within the runtime.
pub fn cancel_on_signal(shutdown: CancellationToken, stopping: &'static str) {
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install signal handlers; stop with SIGKILL");
            return;
        }
    };
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::info!(signal = signal.name(), "{stopping}");
        shutdown.cancel();
    });
}
