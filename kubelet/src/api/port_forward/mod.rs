//! `/portForward/{namespace}/{pod}`: what `kubectl port-forward` reaches through the API
//! server. The request is upgraded to SPDY/3.1 with the `portforward.k8s.io` protocol, as
//! the kubelet's; [`session`] serves the connection.

mod frame;
mod headers;
mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::header::{CONNECTION, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;
use tracing::debug;

use super::{ApiState, plain_error};
use crate::pod::admission::tcp_ports;

const PROTOCOL: &str = "portforward.k8s.io";
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
const SPDY: &str = "SPDY/3.1";
/// Sessions open at once on a node, by default. Each holds a task, its forwards' sockets and
/// their buffers; a person runs a few.
const MAX_SESSIONS: usize = 64;

/// The bound on port-forward sessions open at once on the node.
#[derive(Clone, Debug)]
pub struct Sessions(Arc<Semaphore>);

impl Sessions {
    /// At most `max` sessions at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(MAX_SESSIONS)
    }
}

pub(super) async fn handle(
    State(state): State<ApiState>,
    Path(path): Path<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    if let Some(refusal) = refusal(request.headers()) {
        return refusal;
    }
    let namespace = path.get("namespace").map_or("", String::as_str);
    let name = path.get("pod").map_or("", String::as_str);
    let found = state
        .pods
        .table
        .find(namespace, name)
        .filter(|(uid, _)| path.get("uid").is_none_or(|wanted| wanted == uid));
    let Some((uid, entry)) = found else {
        return plain_error(
            StatusCode::NOT_FOUND,
            format!("pod \"{name}\" in namespace \"{namespace}\" is not on this node"),
        );
    };
    // A pod that has ended no longer holds its ports: another pod may serve them now.
    let status = entry.pod.status.as_ref();
    let phase = status
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("Pending");
    let ip = status
        .and_then(|status| status.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let (Some(ip), "Running") = (ip, phase) else {
        return plain_error(
            StatusCode::BAD_REQUEST,
            format!("unable to forward port because pod is not running. Current status={phase}"),
        );
    };
    let ports = entry
        .pod
        .spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(tcp_ports)
        .collect();
    let target = session::Target {
        pod: format!("{namespace}/{name}"),
        uid,
        ip,
        ports,
        pods: state.pods.table.clone(),
    };
    let Ok(slot) = state.port_forwards.0.clone().try_acquire_owned() else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unable to forward port: too many port-forward sessions on this node; try again later",
        );
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _slot = slot;
        match upgrade.await {
            Ok(upgraded) => {
                session::serve(TokioIo::new(upgraded), target, session::Limits::default()).await;
            }
            Err(err) => debug!(%err, "port-forward: the upgrade did not complete"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(SPDY));
    headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL));
    response
}

/// What the connection's reader does with a client's bytes short of acting on them: frames,
/// header blocks and stream openings. For the fuzz target.
pub(crate) fn parse_client_bytes(data: &[u8]) {
    let mut buffer = BytesMut::from(data);
    let mut inflater = headers::HeaderInflater::new();
    while let Ok(Some(frame)) = frame::SpdyCodec.decode(&mut buffer) {
        if let frame::Frame::SynStream { stream, block, .. } = frame
            && let Ok(pairs) = inflater.pairs(&block)
        {
            let _ = session::Opening::parse(&pairs, stream);
        }
    }
}

/// Why the request is not the kubelet's handshake, if it is not: an upgrade to SPDY/3.1 offering `portforward.k8s.io`. A
/// WebSocket request gets the 400 of a kubelet without WebSocket port forwarding, on which a
/// newer kubectl falls back to SPDY.
fn refusal(headers: &HeaderMap) -> Option<Response> {
    let has = |name, wanted: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.to_ascii_lowercase().contains(wanted))
    };
    if !has(CONNECTION, "upgrade") || !has(UPGRADE, "spdy/3.1") {
        return Some(plain_error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ));
    }
    let offered: Vec<&str> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    if offered.is_empty() {
        return Some(plain_error(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        ));
    }
    if !offered.contains(&PROTOCOL) {
        let mut refusal = plain_error(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{PROTOCOL}\"]"
            ),
        );
        refusal
            .headers_mut()
            .insert(ACCEPTED_HEADER, HeaderValue::from_static(PROTOCOL));
        return Some(refusal);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    axum::http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn the_handshake_is_the_kubelets() {
        let spdy = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")];
        let ok = headers(&[spdy[0], spdy[1], (PROTOCOL_HEADER, PROTOCOL)]);
        assert!(refusal(&ok).is_none());
        // Offered among others, in one header or several.
        let among = headers(&[
            spdy[0],
            spdy[1],
            (PROTOCOL_HEADER, "v2.example, portforward.k8s.io"),
        ]);
        assert!(refusal(&among).is_none());

        // kubectl's WebSocket attempt: a 400, on which it falls back to SPDY.
        let websocket = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let refused = refusal(&websocket).unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

        let unoffered = headers(&spdy);
        assert_eq!(
            refusal(&unoffered).unwrap().status(),
            StatusCode::BAD_REQUEST
        );

        let other = headers(&[spdy[0], spdy[1], (PROTOCOL_HEADER, "channel.k8s.io")]);
        let refused = refusal(&other).unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.headers()[ACCEPTED_HEADER], PROTOCOL);
    }
}
