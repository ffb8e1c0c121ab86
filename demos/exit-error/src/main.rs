//! Explains itself on stderr and exits with the code in EXIT_CODE (default 3).

fn main() {
    let code: i32 = std::env::var("EXIT_CODE").ok().and_then(|c| c.parse().ok()).unwrap_or(3);
    println!("starting, about to fail");
    eprintln!("fatal: configuration missing; exiting with {code}");
    std::process::exit(code);
}
