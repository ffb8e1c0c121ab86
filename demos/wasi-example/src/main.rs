//! Behaves like the WasmEdge `wasi_example_main.wasm` demo: random numbers from the host,
//! an echo, the environment, the arguments, and a file written and read back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A random u64 from the host's entropy (std seeds `RandomState` through WASI `random_get`).
fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

fn main() {
    println!("Random number: {}", random_u64() as u32 as i32);
    let bytes: Vec<u8> = (0..128).map(|_| random_u64() as u8).collect();
    println!("Random bytes: {bytes:?}");
    println!("Printed from wasi: This is from a main function");
    println!("This is from a main function");
    println!("The env vars are as follows.");
    for (key, value) in std::env::vars() {
        println!("{key}: {value}");
    }
    println!("The args are as follows.");
    for arg in std::env::args() {
        println!("{arg}");
    }
    let path = "/tmp.txt";
    if let Err(err) = std::fs::write(path, "This is in a file") {
        eprintln!("cannot write {path}: {err}");
        std::process::exit(2);
    }
    match std::fs::read_to_string(path) {
        Ok(content) => println!("File content is {content}"),
        Err(err) => {
            eprintln!("cannot read {path}: {err}");
            std::process::exit(2);
        }
    }
    let _ = std::fs::remove_file(path);
}
