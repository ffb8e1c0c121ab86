//! Bad guests on purpose, chosen by the first argument:
//! `spin` loops forever without yielding, `trap` executes `unreachable`,
//! `flood` writes lines as fast as it can, `grow` allocates until refused.

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "spin" => {
            println!("spinning");
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "trap" => {
            println!("about to trap");
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
        }
        "flood" => {
            let line = "x".repeat(200);
            for n in 0u64.. {
                println!("{n} {line}");
            }
        }
        "grow" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                println!("holding {} MiB", hoard.len());
            }
        }
        other => {
            eprintln!("unknown mode {other:?}; use spin, trap, flood or grow");
            std::process::exit(64);
        }
    }
}
