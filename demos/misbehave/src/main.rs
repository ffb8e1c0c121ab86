//! Bad guests on purpose, chosen by the first argument:
//! `spin` loops forever without yielding, `trap` executes `unreachable`,
//! `flood` writes lines as fast as it can, `grow` allocates until refused.
//! One well-behaved mode, for measuring what the sandbox costs: `work N` does N rounds of a
//! fixed computation, prints its digest and how long it took, and exits 0.

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
        "work" => {
            let arg = std::env::args().nth(2).unwrap_or_default();
            let Ok(rounds) = arg.parse::<u64>() else {
                eprintln!("work needs a number of rounds, not {arg:?}");
                std::process::exit(64);
            };
            let started = std::time::Instant::now();
            let digest = work(rounds);
            let ms = started.elapsed().as_secs_f64() * 1e3;
            println!("work {rounds} rounds: digest {digest:016x} in {ms:.1} ms");
        }
        other => {
            eprintln!("unknown mode {other:?}; use spin, trap, flood, grow or work");
            std::process::exit(64);
        }
    }
}

/// Each round fills a 64 KiB buffer from a xorshift generator and folds it into an FNV-1a
/// hash: tight loops of arithmetic, loads and stores, as ordinary code has, and a digest
/// that depends on every step, so the compiler cannot skip any of it.
fn work(rounds: u64) -> u64 {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        for word in buffer.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        for &byte in &buffer {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    digest
}
