use std::path::Path;

use anyhow::Context;

/// Writes a kubeconfig for `server` that authenticates with a client certificate. Paths are
/// written as they are, so the files must outlive the kubeconfig.
pub(crate) fn write_cert_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let user = format!(
        "client-certificate: {}\n    client-key: {}",
        cert.display(),
        key.display()
    );
    write_kubeconfig(path, server, ca, &user)
}

/// Writes a kubeconfig for `server` that authenticates with a bearer `token` (e.g. a
/// bootstrap token, `<id>.<secret>`).
pub(crate) fn write_token_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    token: &str,
) -> anyhow::Result<()> {
    write_kubeconfig(path, server, ca, &format!("token: {token}"))
}

/// `user` is the user entry's body, indented for its place under `user:`.
fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: user\n  user:\n    {user}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: user\ncurrent-context: local\n",
        ca = ca.display(),
    );
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
