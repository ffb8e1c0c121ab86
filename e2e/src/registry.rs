use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ports::free_port;
use crate::process::Supervised;
use crate::token_service::{ISSUER, SERVICE, TokenService};

/// The user and password of an authenticated registry.
pub const REGISTRY_USER: &str = "wasmlet";
/// See [`REGISTRY_USER`].
pub const REGISTRY_PASSWORD: &str = "e2e-secret";

/// Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 and a free port, storing into a
/// private temp dir. Optionally behind htpasswd basic auth, or behind HTTPS and a
/// [`TokenService`]'s Bearer tokens. Dropping it stops it.
pub struct Registry {
    process: Supervised,
    port: u16,
    dir: tempfile::TempDir,
}

/// Who the registry serves.
enum Access<'a> {
    Open,
    Htpasswd,
    Token(&'a TokenService),
}

impl Registry {
    /// An open registry.
    pub fn start() -> anyhow::Result<Self> {
        Self::spawn(Access::Open)
    }

    /// A registry that wants [`REGISTRY_USER`] / [`REGISTRY_PASSWORD`].
    pub fn start_with_auth() -> anyhow::Result<Self> {
        Self::spawn(Access::Htpasswd)
    }

    /// A registry served over HTTPS (a certificate from `tokens`' CA) that takes only
    /// Bearer tokens, and sends clients to `tokens` for them.
    pub fn start_with_token_service(tokens: &TokenService) -> anyhow::Result<Self> {
        Self::spawn(Access::Token(tokens))
    }

    fn spawn(access: Access) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wasmlet-registry-")
            .tempdir()?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        match access {
            Access::Open => {}
            Access::Htpasswd => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
                    .output()
                    .context("run htpasswd (apache2-utils)")?;
                if !out.status.success() {
                    bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                std::fs::write(&htpasswd, &out.stdout)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: wasmlet-e2e\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            Access::Token(tokens) => {
                let (certificate, key) = tokens.registry_certificate();
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\nauth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    certificate.display(),
                    key.display(),
                    tokens.realm(),
                    tokens.ca_path().display(),
                ));
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config_path);
        let process = Supervised::spawn("docker-registry", cmd, &dir.path().join("registry.log"))?;
        let mut registry = Self { process, port, dir };
        registry.wait_until_serving()?;
        Ok(registry)
    }

    /// `127.0.0.1:<port>`, the way image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps blobs, for tests that tamper with them.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Its access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// How many times a blob was served (`GET /v2/<repo>/blobs/<digest>`).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("GET /v2/")
                    && l.contains(&format!("/blobs/{digest}"))
                    && l.contains("\" 200 ")
            })
            .count()
    }

    fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                bail!(
                    "docker-registry exited with {status}:\n{}",
                    self.process.log_tail(20)
                );
            }
            // Any status line will do: over TLS, Go's server answers this plain request with
            // a 400 of its own, which says as much that it is serving.
            if http_status(self.port, "/v2/").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry not serving after 20 s:\n{}",
            self.process.log_tail(20)
        )
    }

    /// The directory holding its config and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The status code of a plain-HTTP GET on 127.0.0.1.
fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head);
    text.get(9..12)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")
}
