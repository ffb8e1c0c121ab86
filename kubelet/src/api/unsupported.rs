//! exec, attach and run: a Wasm guest has no processes to enter or a terminal
//! to attach, so these answer with a Kubernetes `Status` that says so, which `kubectl`
//! prints, instead of a bare protocol error.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

fn not_supported(what: &str, why: &str) -> Response {
    let status = Status {
        status: Some("Failure".into()),
        code: Some(400),
        reason: Some("BadRequest".into()),
        message: Some(format!("{what} is not supported for Wasm pods: {why}")),
        ..Default::default()
    };
    (StatusCode::BAD_REQUEST, Json(status)).into_response()
}

pub(super) async fn exec() -> Response {
    not_supported(
        "exec",
        "a WebAssembly guest has no shell or processes to run a command in",
    )
}

pub(super) async fn attach() -> Response {
    not_supported(
        "attach",
        "a WebAssembly guest has no terminal; use kubectl logs -f",
    )
}

pub(super) async fn run() -> Response {
    not_supported(
        "run",
        "a WebAssembly guest has no shell or processes to run a command in",
    )
}
