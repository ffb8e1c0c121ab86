//! The one place registry clients are made.

use std::time::Duration;

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};

/// A registry client speaking `protocol`. oci-client's HTTP stack uses rustls' process-wide
/// crypto provider and panics without one, so this installs ring's when none is set: a
/// library must not make its callers remember that.
pub(crate) fn new_client(protocol: ClientProtocol) -> Client {
    if CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing one is fine: there is one either way.
        let _ = ring::default_provider().install_default();
    }
    Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}
