//! A byte budget for documents in flight (`SLUICE_MAX_INFLIGHT_BYTES`): a document's source
//! size is reserved before it is read and released when it is done, so a handful of 50 MB PDFs
//! arriving together are processed one after another instead of all at once. A document holds
//! up to its size (the bytes, then its text, a few chunk windows at a time) while it is
//! processed; the budget bounds that by what is in flight, not by how many documents the
//! concurrency setting lets in.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB so a budget of many GiB fits a semaphore's `u32`.
const UNIT: u64 = 1024;

/// Documents at least this large hand their freed memory back to the OS when they are done.
const TRIM_AFTER_BYTES: u64 = 8 << 20;

/// Shared by every document of a process; clones share the budget.
#[derive(Debug, Clone)]
pub struct DocumentBudget {
    units: Arc<Semaphore>,
    capacity_units: u32,
}

/// A document's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes < TRIM_AFTER_BYTES {
            return;
        }
        // Trimming walks every arena; keep it off the async threads when there is a runtime.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(release_free_memory)),
            Err(_) => release_free_memory(),
        }
    }
}

/// Returns the allocator's free pages to the OS. glibc keeps what a large document freed (its
/// text, its chunk windows, the provider's replies) in per-thread arenas, and raises its mmap
/// threshold after the first large free, so without this a worker's resident size after one
/// 50 MB PDF stays ~90 MB higher, and the next large document's peak lands on top of it.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl DocumentBudget {
    pub fn new(bytes: u64) -> Self {
        let capacity_units = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        DocumentBudget {
            units: Arc::new(Semaphore::new(capacity_units as usize)),
            capacity_units,
        }
    }

    /// Waits until a document of `bytes` fits beside those in flight. One larger than the whole
    /// budget waits for all of it and then runs alone. Waiters are served in arrival order, so a
    /// large document is not starved by a stream of small ones.
    pub async fn reserve(&self, bytes: u64) -> Reservation {
        let units = bytes
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.capacity_units)) as u32;
        let permit = self
            .units
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        Reservation {
            _permit: permit,
            bytes,
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn large_documents_wait_for_each_other_and_small_ones_fit_beside() {
        let budget = DocumentBudget::new(64 << 20);
        let first = budget.reserve(50 << 20).await;
        // A small document still fits next to the large one.
        let small = budget.reserve(8 << 10).await;
        // A second large one waits until the first is done.
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(50 << 20));
        assert!(
            waiting.await.is_err(),
            "two 50 MB documents must not be in flight at once"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), budget.reserve(50 << 20))
            .await
            .expect("the budget is released when a document is done");
        drop((small, second));
        assert_eq!(budget.available(), 64 << 20);
    }

    #[tokio::test]
    async fn a_document_over_the_whole_budget_runs_alone() {
        let budget = DocumentBudget::new(64 << 20);
        let huge = budget.reserve(100 << 20).await;
        assert_eq!(budget.available(), 0);
        drop(huge);
        let empty = budget.reserve(0).await;
        assert_eq!(budget.available(), (64 << 20) - 1024);
        drop(empty);
    }
}
