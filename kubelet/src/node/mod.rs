//! The Node object: what it should say, registering it, keeping its Lease and its status.

pub mod allocatable;
pub mod conditions;
pub mod events;
pub mod lease;
pub mod object;
pub mod pressure;
pub mod registration;
pub mod status;

/// How long the node's Lease is valid without renewal, as the kubelet sets it.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the Lease is renewed: a quarter of its duration, as the kubelet does.
pub const LEASE_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How often status is computed and sent if it changed.
pub const STATUS_UPDATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest status goes unsent even when nothing changed.
pub const STATUS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);
