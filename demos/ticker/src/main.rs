//! Runs until stopped, logging a numbered, timestamped line every INTERVAL_MS (default 1000).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    let interval: u64 = std::env::var("INTERVAL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let name = std::env::var("POD_NAME").unwrap_or_else(|_| "ticker".into());
    for n in 0.. {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        println!("tick {n} from {name} at {now}");
        std::thread::sleep(Duration::from_millis(interval));
    }
}
