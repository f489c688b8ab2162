//! Publishing approved drafts.
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use crate::config::Config;
use crate::daemon::Shared;
use super::statuspage::Clients;
pub async fn run(_shared: Arc<Shared>, _clients: Arc<Clients>, _config: Arc<Config>, stop: CancellationToken) { stop.cancelled().await }
