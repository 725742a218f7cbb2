//! The fence around a run's writes: a document lease that the run renews while it works, and that
//! every write checks first.
//!
//! The lease is valid, as far as this process can tell, until the moment the last successful
//! renewal was *sent* plus the lease length: the database measured its expiry from a later instant,
//! so this is never later than the real expiry. A run whose renewals fail (database unreachable)
//! or that was frozen (SIGSTOP, a VM pause) past that moment stops writing on its own — the next
//! check fails — before another run can have claimed the document, except for a margin that
//! covers clock-rate differences. A renewal the database refuses means the document was taken
//! over or deleted: the run stops at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metadata::MetadataStore;

/// A held document lease. Cheap to check; [`Lease::keep`] renews it until it is lost.
pub(crate) struct Lease<'a> {
    metadata: &'a dyn MetadataStore,
    collection: &'a str,
    doc_id: &'a str,
    token: uuid::Uuid,
    length: Duration,
    valid_until: Mutex<Instant>,
    lost: CancellationToken,
}

impl<'a> Lease<'a> {
    /// A lease of `length` granted by a `begin` that was sent at `requested`.
    pub(crate) fn new(
        metadata: &'a dyn MetadataStore,
        collection: &'a str,
        doc_id: &'a str,
        token: uuid::Uuid,
        length: Duration,
        requested: Instant,
    ) -> Self {
        Lease {
            metadata,
            collection,
            doc_id,
            token,
            length,
            valid_until: Mutex::new(requested + length),
            lost: CancellationToken::new(),
        }
    }

    pub(crate) fn token(&self) -> uuid::Uuid {
        self.token
    }

    pub(crate) fn doc_id(&self) -> &str {
        self.doc_id
    }

    /// Time kept in hand before the computed expiry: a check this close to it fails.
    fn margin(&self) -> Duration {
        (self.length / 10).max(Duration::from_millis(200))
    }

    fn until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this run may still write. Call right before every write.
    pub(crate) fn held(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() + self.margin() < self.until()
    }

    /// Renews every third of the lease; returns once the lease is lost (refused, or not renewed
    /// in time). Never returns while the lease is held.
    pub(crate) async fn keep(&self) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.length / 3) => {}
                _ = self.lost.cancelled() => return,
            }
            let sent = Instant::now();
            // A renewal that hangs must not outlive the lease it tries to extend.
            let deadline = self.until().saturating_duration_since(sent + self.margin());
            let renewed = tokio::time::timeout(
                deadline,
                self.metadata
                    .renew(self.collection, self.doc_id, self.token, self.length),
            )
            .await;
            match renewed {
                Ok(Ok(true)) => {
                    *self
                        .valid_until
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = sent + self.length;
                }
                Ok(Ok(false)) => {
                    tracing::warn!(doc_id = %self.doc_id, "document lease taken over or deleted; stopping");
                    self.lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, doc_id = %self.doc_id, "could not renew document lease")
                }
                Err(_) => {
                    tracing::warn!(doc_id = %self.doc_id, "document lease renewal timed out")
                }
            }
            if !self.held() {
                tracing::warn!(doc_id = %self.doc_id, "document lease could not be renewed in time; stopping");
                self.lost.cancel();
                return;
            }
        }
    }
}
