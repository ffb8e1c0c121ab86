//! Container logs: the writer a provider's guests print to, the hub that wakes followers,
//! and the reader behind `/containerLogs`.

mod hub;
pub mod query;
pub mod reader;
mod sink;

pub use hub::LogHub;
pub use query::LogQuery;
pub use sink::{LogLimits, LogSink, LogStream, Stream};

#[cfg(test)]
mod tests;
