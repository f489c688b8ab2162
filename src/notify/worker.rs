//! The delivery worker: takes due outbox entries and delivers them. To be completed: see issue 4.

use std::sync::Arc;

use crate::daemon::Shared;

/// Delivers outbox entries until shutdown.
pub async fn run(shared: Arc<Shared>) {
    shared.shutdown.cancelled().await;
}
