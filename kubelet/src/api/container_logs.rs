//! `GET /containerLogs/{namespace}/{pod}/{container}`: what `kubectl logs` reads.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::{ApiState, plain_error};
use crate::logs::LogQuery;
use crate::logs::reader::{self, instance_path};

pub(super) async fn get(
    State(state): State<ApiState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match LogQuery::parse(&params, jiff::Timestamp::now()) {
        Ok(query) => query,
        Err(message) => return plain_error(StatusCode::BAD_REQUEST, message),
    };
    let Some((uid, entry)) = state.pods.table.find(&namespace, &pod) else {
        return plain_error(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{namespace}\" is not on this node"),
        );
    };
    let spec = entry.pod.spec.clone().unwrap_or_default();
    let known = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == container);
    if !known {
        return plain_error(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" is not in pod \"{pod}\""),
        );
    }
    let dir = reader::container_dir(&state.pods.pods_dir, &uid, &container);
    let instances = match reader::instances(&dir).await {
        Ok(instances) => instances,
        Err(err) => {
            return plain_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot list the logs of container \"{container}\": {err}"),
            );
        }
    };
    let chosen = if query.previous {
        instances.iter().rev().nth(1)
    } else {
        instances.last()
    };
    let Some(&restart) = chosen else {
        let message = if query.previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start")
        };
        return plain_error(StatusCode::BAD_REQUEST, message);
    };
    let path = instance_path(&dir, restart);
    // Subscribed before the first read, so nothing written in between is missed.
    let live = if query.previous {
        None
    } else {
        state.pods.logs.subscribe(&path)
    };
    let follower = (query.follow && live.is_some()).then(|| state.pods.metrics.follower());
    let body = reader::stream(path, query, live).map(move |chunk| {
        // Held by the stream, so the gauge drops when the client goes away.
        let _counted = &follower;
        chunk
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}
