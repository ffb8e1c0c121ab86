//! Facts about the host that the Node reports: CPUs, memory, disk, OS and identity.
//!
//! Each reader is forgiving: a fact that cannot be read is reported empty rather than
//! stopping the agent, because a missing `/etc/machine-id` must not keep a node from joining.

use std::path::Path;

/// Static facts, read once at start-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    /// Logical CPUs available to this process.
    pub cpus: u32,
    /// Total physical memory in bytes.
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` from os-release.
    pub os_image: String,
    /// `std::env::consts::OS`, e.g. `linux`.
    pub operating_system: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The DMI product UUID, when readable.
    pub system_uuid: String,
    /// The kernel's host name.
    pub hostname: String,
}

impl HostFacts {
    /// Reads the facts from this host.
    pub fn read() -> Self {
        let uname = rustix::system::uname();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: memory_total_bytes().unwrap_or(0),
            kernel_version: uname.release().to_string_lossy().into_owned(),
            os_image: read_os_image().unwrap_or_else(|| "unknown".into()),
            operating_system: std::env::consts::OS.to_string(),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            hostname: uname.nodename().to_string_lossy().into_owned(),
        }
    }
}

/// The host's memory, in bytes.
pub fn memory_total_bytes() -> Option<u64> {
    read_meminfo_kib("MemTotal:").and_then(|kib| kib.checked_mul(1024))
}

/// Memory the kernel says is available for new work, in bytes.
pub fn memory_available_bytes() -> Option<u64> {
    read_meminfo_kib("MemAvailable:").and_then(|kib| kib.checked_mul(1024))
}

/// CPU time the whole host has spent busy (not idle or waiting on I/O) since boot, in
/// nanoseconds, from the `cpu` line of `/proc/stat`.
pub fn cpu_busy_nanos() -> Option<u64> {
    parse_cpu_busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
        .map(|ticks| ticks.saturating_mul(NANOS_PER_TICK))
}

/// `/proc/stat` counts in USER_HZ, which Linux fixes at 100 for user space.
const NANOS_PER_TICK: u64 = 10_000_000;

fn parse_cpu_busy_ticks(stat: &str) -> Option<u64> {
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal …: everything but idle and iowait.
    let busy = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy)
}

/// Size and free space of the filesystem holding a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged writers.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Measures the filesystem that holds `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let st = rustix::fs::statvfs(path)?;
        Ok(Self {
            total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
            available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read_meminfo_kib(field: &str) -> Option<u64> {
    parse_meminfo_kib(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

fn parse_meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn read_os_image() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()?;
    parse_pretty_name(&text)
}

fn parse_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_parsed_in_kib() {
        let text = "MemTotal:       24567896 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(parse_meminfo_kib(text, "MemTotal:"), Some(24567896));
        assert_eq!(parse_meminfo_kib(text, "MemAvailable:"), Some(2000));
        assert_eq!(parse_meminfo_kib(text, "SwapTotal:"), None);
    }

    #[test]
    fn busy_cpu_leaves_out_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 50 2 3 4 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_cpu_busy_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
        assert_eq!(parse_cpu_busy_ticks("intr 1\n"), None);
        assert!(cpu_busy_nanos().is_some_and(|n| n > 0));
    }

    #[test]
    fn pretty_name_is_unquoted() {
        let text = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn this_host_reports_cpus_memory_and_disk() {
        let facts = HostFacts::read();
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        let disk = DiskUsage::of(Path::new("/")).unwrap();
        assert!(disk.total_bytes >= disk.available_bytes && disk.total_bytes > 0);
    }
}
