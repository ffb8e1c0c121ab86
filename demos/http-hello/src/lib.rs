//! A `wasi:http/proxy` component: wasmlet serves it on the pod's containerPort, one instance
//! per request. It answers `GET /anything` with a greeting naming its pod and the path, and
//! `/sleep?ms=N` after waiting N milliseconds (for the concurrency and drain tests); `/trap`
//! traps and `/spin` loops forever, as buggy handlers do; `/stream` answers at once and then
//! never ends its body, as an event stream does; `/hang` answers its head and then waits for
//! ever without a byte of body; `/then-log` answers with its whole body and a
//! `Content-Length` and then goes on working, logging once it is done. Each request is logged
//! to stdout, so `kubectl logs` shows it.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "an unnamed pod".into());
        if path == "/trap" {
            // A panic in a component is a trap: the instance ends without answering.
            panic!("asked to trap");
        }
        if path == "/spin" {
            // Never answers and never waits: the node's response timeout and the pod's CPU
            // limit are what hold it.
            let mut turns: u64 = 0;
            loop {
                turns = std::hint::black_box(turns.wrapping_add(1));
            }
        }
        if path == "/stream" {
            stream(response_out);
            return;
        }
        if path == "/then-log" {
            let head = matches!(request.method(), Method::Head);
            then_log(if head { "HEAD" } else { "GET" }, response_out);
            return;
        }
        if path == "/hang" {
            hang(response_out);
            return;
        }
        if let Some(ms) = path
            .strip_prefix("/sleep?ms=")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            // A monotonic-clock pollable: the instance waits without spinning.
            wasip2::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000))
                .block();
        }
        println!("handled {path}");
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(mut out) = body.write() {
            let _ = writeln!(out, "hello from {pod}: you asked for {path}");
            let _ = out.flush();
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Answers with the whole body at once, its length in the head, as a handler with its
/// answer at hand does, and then works on for three seconds (a log write, a metric; longer
/// than the node gives an instance whose client hung up): the line it logs after shows the
/// node let it finish once its response was written.
fn then_log(method: &str, response_out: ResponseOutparam) {
    let text = b"answered; more work follows\n";
    let Ok(headers) = Fields::from_list(&[(
        "content-length".to_string(),
        text.len().to_string().into_bytes(),
    )]) else {
        return;
    };
    let response = OutgoingResponse::new(headers);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut out) = body.write() {
        // A HEAD request's body goes nowhere: its writes may fail, and that is fine.
        let _ = out.write_all(text);
        let _ = out.flush();
    }
    let _ = OutgoingBody::finish(body, None);
    wasip2::clocks::monotonic_clock::subscribe_duration(3_000_000_000).block();
    println!("finished the work after answering {method} /then-log");
}

/// Answers the head and then waits for ever, writing nothing, as a handler stuck after its
/// response began does: only the node stopping the instance ends it.
fn hang(response_out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let Ok(_body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    loop {
        wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000).block();
    }
}

/// A line every 100 ms until the client goes (or the instance is stopped), waiting on the
/// clock in between rather than spinning.
fn stream(response_out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let Ok(mut out) = body.write() else {
        return;
    };
    for tick in 0u64.. {
        // One write per line, so that each line is one chunk of the response.
        let line = format!("tick {tick}\n");
        if std::io::Write::write_all(&mut out, line.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut out))
            .is_err()
        {
            return;
        }
        wasip2::clocks::monotonic_clock::subscribe_duration(100_000_000).block();
    }
}
