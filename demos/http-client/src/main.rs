//! A WASI preview 2 component that GETs each URL in its arguments through wasi:http and
//! prints one line per request, in argument order:
//!
//! ```text
//! GET <url> -> <status> <first bytes of the body>
//! GET <url> -> error: <wasi:http error code>
//! ```
//!
//! By default the requests go one after another. With `--concurrent` (before the URLs) all
//! are sent first and then awaited, so the host's bound on requests in flight shows.
//!
//! Exit code: 0 when every request got a response (whatever its status), 1 when any failed
//! (denied by the node, connection refused, …), 2 for a usage error. A pod's phase then
//! says whether its requests went through.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingRequest, Scheme,
};

/// How much of each body is read and printed.
const BODY_PREVIEW: usize = 64;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let concurrent = args.first().is_some_and(|a| a == "--concurrent");
    if concurrent {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("usage: http-client [--concurrent] URL...");
        std::process::exit(2);
    }
    let mut failed = false;
    let mut report = |url: &str, outcome: Result<(u16, String), String>| match outcome {
        Ok((status, body)) => println!("GET {url} -> {status} {body}"),
        Err(err) => {
            failed = true;
            println!("GET {url} -> error: {err}");
        }
    };
    if concurrent {
        let pending: Vec<_> = args.iter().map(|url| (url, send(url))).collect();
        for (url, sent) in pending {
            report(url, sent.and_then(|f| receive(&f)));
        }
    } else {
        for url in &args {
            report(url, send(url).and_then(|f| receive(&f)));
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// Starts a GET of `url`; the response arrives on the returned future.
fn send(url: &str) -> Result<FutureIncomingResponse, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not a URL: {url}"))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other}")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |what: &str| format!("invalid {what} in {url}");
    request
        .set_method(&Method::Get)
        .map_err(|()| invalid("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| invalid("path"))?;
    outgoing_handler::handle(request, None).map_err(|code| describe(&code))
}

/// Waits for the response head, then reads the start of the body.
fn receive(future: &FutureIncomingResponse) -> Result<(u16, String), String> {
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(describe(&code)),
        Some(Err(())) => return Err("the response was already taken".into()),
        None => return Err("the response is not ready after waiting for it".into()),
    };
    let status = response.status();
    Ok((status, preview(&response)?))
}

/// Up to [`BODY_PREVIEW`] bytes of the body, on one line.
fn preview(response: &IncomingResponse) -> Result<String, String> {
    let body = response
        .consume()
        .map_err(|()| "the body was already taken".to_string())?;
    let mut bytes = Vec::new();
    {
        // The stream is a child of the body and must go before it.
        let stream = body
            .stream()
            .map_err(|()| "the body stream was already taken".to_string())?;
        while bytes.len() < BODY_PREVIEW {
            match stream.blocking_read((BODY_PREVIEW - bytes.len()) as u64) {
                Ok(chunk) => bytes.extend(chunk),
                // Closed: the body ended. A failed read is reported with what came before.
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                    return Err(format!("reading the body: {}", e.to_debug_string()));
                }
            }
        }
    }
    drop(body);
    Ok(String::from_utf8_lossy(&bytes).replace(['\r', '\n'], " "))
}

/// `HttpRequestDenied`, `ConnectionRefused`, …: the wasi:http error code's own name.
fn describe(code: &ErrorCode) -> String {
    let text = format!("{code:?}");
    text.strip_prefix("ErrorCode::")
        .map(str::to_string)
        .unwrap_or(text)
}
