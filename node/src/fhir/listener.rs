//! The HTTP door of the FHIR API, hardened against exhaustion: a connection cap below the
//! descriptor limit, a per-address share of it, a deadline for request headers (which also
//! closes idle keep-alive connections), and a deadline for reading a request body (see
//! [`super::api`]). A connection over a cap is closed at once, so it holds no descriptor.

use crate::limits::AddressSlots;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Bounds of the HTTP door.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections one source address may hold.
    pub per_address: usize,
    /// Time to send a request's headers; also how long an idle keep-alive connection stays.
    pub header_timeout: Duration,
}

impl HttpLimits {
    /// Limits for a process whose descriptor limit is `descriptors`: at most a quarter of
    /// them (and 4,096) for HTTP, keeping the rest for storage, gossip and the data plane.
    pub fn for_descriptors(descriptors: u64) -> Self {
        Self {
            max_connections: (descriptors / 4).clamp(16, 4096) as usize,
            per_address: 64,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = AddressSlots::new(limits.per_address);
    let mut connections = tokio::task::JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or similar: wait for connections to end.
                    tracing::warn!(error = %e, "FHIR API cannot accept a connection");
                    if let Some(done) = connections.join_next().await {
                        let _ = done;
                    }
                    continue;
                }
            },
        };
        let slot = per_address.take(remote.ip());
        let permit = permits.clone().try_acquire_owned().ok();
        let (Some(slot), Some(permit)) = (slot, permit) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%remote, refused, "FHIR API connection refused: over the connection limit");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote))),
        );
        connections.spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "FHIR API connection ended");
            }
        });
    }
    connections.abort_all();
}
