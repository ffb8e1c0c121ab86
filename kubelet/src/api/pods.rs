//! `/pods` and `/metrics`: what this node runs, as the node itself sees it.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::Pod;

use super::ApiState;

/// `GET /pods`: a `PodList` of this node's pods with the status this node computed.
pub(super) async fn list(State(state): State<ApiState>) -> Json<k8s_openapi::List<Pod>> {
    Json(k8s_openapi::List {
        items: state
            .pods
            .table
            .snapshot()
            .into_iter()
            // Copied outside the table's lock, for the response.
            .map(|e| std::sync::Arc::unwrap_or_clone(e.pod))
            .collect(),
        metadata: Default::default(),
    })
}

/// `GET /metrics`: the agent's own metrics, in the OpenMetrics text format.
pub(super) async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.pods.metrics.render(&state.pods.table),
    )
}
