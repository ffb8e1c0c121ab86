use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

/// kubectl pointed at one cluster, used the way a person would use it.
pub struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl with `--kubeconfig kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// Runs `kubectl args…` and returns stdout; a non-zero exit is an error carrying stderr.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.command(args).output().context("run kubectl")?;
        checked(args, output)
    }

    /// Runs `kubectl args… -o json` and parses the result.
    pub fn get_json<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parse kubectl {args:?} output"))
    }

    /// Runs `kubectl get args… -o json` for a list; kubectl wraps lists as `kind: List`,
    /// so only the items are typed.
    pub fn get_items<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<Vec<T>> {
        #[derive(serde::Deserialize)]
        struct Items<T> {
            items: Vec<T>,
        }
        let mut all = vec!["get"];
        all.extend(args);
        Ok(self.get_json::<Items<T>>(&all)?.items)
    }

    /// `kubectl apply -f -` with `manifest` on stdin.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<String> {
        let mut child = self
            .command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(manifest.as_bytes())?;
        checked(&["apply"], child.wait_with_output()?)
    }

    /// Starts `kubectl args…` with stdout piped, for commands that stream (`logs -f`). The
    /// process is killed when the child is dropped.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::from(self.command(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("run kubectl")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }
}

fn checked(args: &[&str], output: Output) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
