//! A wasi:cli/command component that listens through wasi:sockets itself (Rust's std::net on
//! wasm32-wasip2). It tries to bind each address in its arguments and logs what happened;
//! wasmlet lets a container bind only the TCP containerPorts it declares. It then answers
//! every HTTP request on the first address it got with one line, until stopped.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    let mut listening: Option<TcpListener> = None;
    for address in std::env::args().skip(1) {
        match TcpListener::bind(address.as_str()) {
            Ok(listener) => {
                println!("bind {address}: ok");
                listening.get_or_insert(listener);
            }
            Err(err) => println!("bind {address}: refused: {err}"),
        }
    }
    let Some(listener) = listening else {
        println!("nothing to listen on");
        return;
    };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        // Read the request head, then answer it and close.
        let mut reader = BufReader::new(&mut stream);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let body = "hello from a component that listens itself\n";
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        println!("answered {}", first.trim());
    }
}
