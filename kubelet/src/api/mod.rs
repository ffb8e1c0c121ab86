//! The kubelet HTTPS API's routes, behind authentication and authorization.
//!
//! The paths and their answers are the kubelet's, so the API server's proxy, `kubectl logs`
//! and metrics-server work unchanged. [`server`](crate::server) owns TLS and connections;
//! this module owns what a request may see.

pub mod auth;
mod container_logs;
mod pods;
pub(crate) mod port_forward;
mod review_cache;
pub mod stats;
mod unsupported;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::pod::SharedPodState;
use auth::Gatekeeper;
pub use port_forward::Sessions as PortForwardSessions;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// This node's name.
    pub node_name: String,
    /// The pods, their logs and metrics, shared with the pod workers.
    pub pods: SharedPodState,
    /// Who may do what.
    pub gate: Arc<Gatekeeper>,
    /// CPU rates between scrapes, for `/stats/summary`.
    pub rates: Arc<stats::CpuRates>,
    /// Port-forward sessions open at once: an upgraded connection leaves the server's
    /// connection bound when it upgrades, so sessions have their own.
    pub port_forwards: PortForwardSessions,
}

/// The API's routes. Every one of them requires an authenticated, authorized caller, as the
/// kubelet's do.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods::list))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs::get),
        )
        .route("/stats/summary", get(stats::summary))
        .route("/metrics/resource", get(stats::resource_metrics))
        .route("/metrics", get(pods::metrics))
        .route("/exec/{*rest}", any(unsupported::exec))
        .route("/attach/{*rest}", any(unsupported::attach))
        .route("/run/{*rest}", any(unsupported::run))
        .route("/portForward/{namespace}/{pod}", any(port_forward::handle))
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            any(port_forward::handle),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .with_state(state)
}

/// An error as the kubelet writes it: a status code and one line of plain text, which the API
/// server passes on to `kubectl`.
pub(crate) fn plain_error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, message.into()).into_response()
}

#[cfg(test)]
mod tests;
