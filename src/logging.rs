//! The agent's log: the kubelet's `--v` levels, as text or as JSON lines, on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{AgentArgs, LogFormat};

/// wasmlet's own crates, whose detail `--v` turns up first.
const OURS: [&str; 6] = [
    "wasmlet",
    "kubelet",
    "certs",
    "oci",
    "wasi_provider",
    "wasi_policy",
];

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the level's filter.
pub fn init(agent: &AgentArgs) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(directives(agent.verbosity)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match agent.log_format {
        // Colour only for a person at a terminal: a log file or journal gets plain text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The filter for a kubelet verbosity level: 0-2 is what an operator needs (the kubelet's
/// default and its recommended production level read the same here), 3-4 adds wasmlet's
/// debugging detail, 5 its every step, 6-7 the API client's requests, 8 and up everything.
fn directives(verbosity: u8) -> String {
    let (ours, client) = match verbosity {
        0..=2 => ("info", "warn"),
        3..=4 => ("debug", "warn"),
        5 => ("trace", "warn"),
        6..=7 => ("trace", "debug"),
        _ => return "trace".into(),
    };
    let mut directives = vec!["info".to_string()];
    directives.extend(OURS.iter().map(|krate| format!("{krate}={ours}")));
    directives.extend(["kube_client", "tower"].map(|krate| format!("{krate}={client}")));
    directives.join(",")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The events a filter for `verbosity` lets through, each as `target level`.
    fn shown(verbosity: u8) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(directives(verbosity)))
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "kubelet", "kubelet-info");
            tracing::debug!(target: "kubelet", "kubelet-debug");
            tracing::trace!(target: "wasi_provider", "provider-trace");
            tracing::info!(target: "kube_client", "client-info");
            tracing::debug!(target: "kube_client", "client-debug");
            tracing::trace!(target: "hyper", "hyper-trace");
        });
        let bytes = out.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        text.split_whitespace()
            .filter(|word| word.contains('-') && !word.contains(':'))
            .collect::<Vec<_>>()
            .join(" ")
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn higher_levels_show_more_of_ours_first_then_the_api_client() {
        assert_eq!(shown(0), "kubelet-info");
        assert_eq!(shown(2), "kubelet-info");
        assert_eq!(shown(4), "kubelet-info kubelet-debug");
        assert_eq!(shown(5), "kubelet-info kubelet-debug provider-trace");
        assert_eq!(
            shown(6),
            "kubelet-info kubelet-debug provider-trace client-info client-debug"
        );
        assert_eq!(
            shown(9),
            "kubelet-info kubelet-debug provider-trace client-info client-debug hyper-trace"
        );
    }
}
