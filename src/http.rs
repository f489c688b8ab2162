//! The HTTP API (spec §7) and `/metrics`. To be completed: see issue 3.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::daemon::Shared;

/// Serves the API on `listener` until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) -> std::io::Result<()> {
    let app = axum::Router::new().route("/-/healthy", axum::routing::get(|| async { "Healthy\n" }));
    let token = shared.shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { token.cancelled().await }).await
}
