//! The rules for pods' outbound HTTP, apart from the runtime that enforces them: the pod's
//! own allow-list and concurrency bound (its annotations, as Krustlet named them) and the
//! node's egress policy, which the pod cannot widen. Kept apart from the WASI provider so
//! that these parsers of outside input can be fuzzed without building Wasmtime.

pub mod egress;
pub mod http;

pub use egress::EgressPolicy;
pub use http::{ALLOWED_DOMAINS, HttpPolicy, MAX_CONCURRENT_REQUESTS, PolicyError};
