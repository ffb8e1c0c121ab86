//! A WASI preview 2 component that reads its mounted files: a ConfigMap's keys, a Secret, or
//! any path, and says plainly when it may not.
//!
//! `config-reader [--write PATH=TEXT]... [--fill PATH=KIB]... [--every SECONDS] PATH...`
//!
//! Each `--write` (and `--fill`, which writes KIB kibibytes of zeros) is tried first and
//! reported (`wrote PATH` or `cannot write PATH: …`). Then
//! each PATH is printed as `PATH: <contents>` (a directory as its sorted entries, a failure
//! as `PATH: error: …`). With `--every`, the paths are read again at that interval and a
//! line is printed only when what a path shows changed, so a ConfigMap update appears as a
//! new line.

use std::collections::HashMap;
use std::time::Duration;

fn main() {
    let mut writes = Vec::new();
    let mut every = None;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--write" => writes.extend(args.next()),
            "--fill" => {
                let fill = args.next().unwrap_or_default();
                let Some((path, kib)) = fill
                    .split_once('=')
                    .and_then(|(p, k)| Some((p.to_string(), k.parse::<usize>().ok()?)))
                else {
                    eprintln!("--fill takes PATH=KIB, not {fill:?}");
                    std::process::exit(64);
                };
                writes.push(format!("{path}={}", "\0".repeat(kib * 1024)));
            }
            "--every" => {
                every = args
                    .next()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64);
                if every.is_none() {
                    eprintln!("--every needs a positive number of seconds");
                    std::process::exit(64);
                }
            }
            _ => paths.push(arg),
        }
    }
    for write in &writes {
        let Some((path, text)) = write.split_once('=') else {
            eprintln!("--write takes PATH=TEXT, not {write:?}");
            std::process::exit(64);
        };
        match std::fs::write(path, text) {
            Ok(()) => println!("wrote {path}"),
            Err(err) => println!("cannot write {path}: {err}"),
        }
    }
    let mut shown: HashMap<&str, String> = HashMap::new();
    loop {
        for path in &paths {
            let view = describe(path);
            if shown.get(path.as_str()) != Some(&view) {
                println!("{path}: {view}");
                shown.insert(path, view);
            }
        }
        match every {
            Some(interval) => std::thread::sleep(interval),
            None => break,
        }
    }
}

/// What `path` holds, on one line.
fn describe(path: &str) -> String {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                format!("dir [{}]", names.join(", "))
            }
            Err(err) => format!("error: {err}"),
        },
        Ok(_) => match std::fs::read_to_string(path) {
            Ok(text) => text.trim_end().replace('\n', "\\n"),
            Err(err) => format!("error: {err}"),
        },
        Err(err) => format!("error: {err}"),
    }
}
