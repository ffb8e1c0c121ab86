//! `--config FILE`: every setting that an agent flag has, in a versioned YAML file, in the
//! manner of the kubelet's KubeletConfiguration.
//!
//! A key is its flag's long name in camelCase (`--max-pods` is `maxPods`). The file's settings
//! become flags placed before the command line's, so the same parsers check both and a flag
//! given on the command line wins. Unknown keys are refused by name; so is a value of the
//! wrong shape, with the key and the file in the message.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser};

use crate::cli::Cli;

/// The file's `apiVersion`.
pub const API_VERSION: &str = "wasmlet.dev/v1alpha1";
/// The file's `kind`.
pub const KIND: &str = "WasmletConfiguration";
/// Arguments that are about reading the command line, not settings.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];
/// A config file is a few kilobytes; a larger one is a mistake, not a setting.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The command line as parsed, and what it said over the config file.
pub struct Parsed {
    /// The settings.
    pub cli: Cli,
    /// One line for each setting the file and the command line both give (the flag wins).
    pub overridden: Vec<String>,
}

/// Parses the command line, with the settings of `--config FILE` (if given) before its own:
/// right after the program's name, or after `join` for `wasmlet join`.
pub fn parse_cli(args: Vec<OsString>) -> anyhow::Result<Parsed> {
    let Some(path) = config_path(&args) else {
        return Ok(Parsed {
            cli: parse(args)?,
            overridden: Vec::new(),
        });
    };
    let settings = read(Path::new(&path))?;
    let program = args.first().cloned().unwrap_or_else(|| "wasmlet".into());
    // The file alone first, so that a bad value is reported as the file's.
    parse(std::iter::once(program.clone()).chain(settings.iter().cloned()))
        .with_context(|| format!("config file {}", path.to_string_lossy()))?;
    let split = if args.get(1).is_some_and(|a| a == "join") {
        2
    } else {
        1
    };
    let (head, tail) = args.split_at(split.min(args.len()));
    let given = long_names(tail);
    let overridden = long_names(&settings)
        .into_iter()
        .filter(|long| given.contains(long))
        .map(|long| {
            format!(
                "--{long} on the command line overrides {} in config file {}",
                camel_case(&long),
                path.to_string_lossy()
            )
        })
        .collect();
    let cli = parse(head.iter().chain(&settings).chain(tail).cloned())?;
    Ok(Parsed { cli, overridden })
}

/// Parses `args`; a bad one is an error of one line (clap's first, without its `error: `),
/// as every other error of the command line is. Help and the version are printed, and the
/// process exits, as clap does.
fn parse(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Cli> {
    Cli::try_parse_from(args).map_err(|err| match err.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayVersion
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => err.exit(),
        _ => {
            let text = err.to_string();
            let line = first_line(&text);
            anyhow::anyhow!("{}", line.strip_prefix("error: ").unwrap_or(line))
        }
    })
}

/// The long names of the flags among `args` (`-v` is `--v`), in order, each once.
fn long_names(args: &[OsString]) -> Vec<String> {
    let mut names = Vec::new();
    for arg in args.iter().filter_map(|a| a.to_str()) {
        let name = match arg.strip_prefix("--") {
            Some(flag) => flag.split_once('=').map_or(flag, |(name, _)| name),
            None if arg.starts_with("-v") => "v",
            None => continue,
        };
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// The value of `--config` on the command line, if any, for the agent.
fn config_path(args: &[OsString]) -> Option<OsString> {
    // `wasmlet ps` and `wasmlet logs` read the file only for its dataDir (cli.rs): its
    // settings are the agent's flags, which they do not take.
    if args.get(1).is_some_and(|a| a == "ps" || a == "logs") {
        return None;
    }
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return None;
        }
        if arg == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    None
}

/// The settings of the file at `path`, as flags.
fn read(path: &Path) -> anyhow::Result<Vec<OsString>> {
    let context = || format!("config file {}", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
        &mut text,
    )
    .with_context(context)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!("{}: larger than {MAX_FILE_BYTES} bytes", context());
    }
    settings(&text).with_context(context)
}

/// The settings in `text` (YAML), as flags.
fn settings(text: &str) -> anyhow::Result<Vec<OsString>> {
    let mut document: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(text)
        .map_err(|err| anyhow::anyhow!("{}", first_line(&err.to_string())))?;
    let api_version = document.remove("apiVersion");
    let kind = document.remove("kind");
    if api_version.as_ref().and_then(|v| v.as_str()) != Some(API_VERSION)
        || kind.as_ref().and_then(|v| v.as_str()) != Some(KIND)
    {
        bail!(
            "apiVersion must be {API_VERSION} and kind {KIND} (found {} and {})",
            shown(api_version.as_ref()),
            shown(kind.as_ref())
        );
    }
    let flags = settable_flags();
    let unknown: Vec<&str> = document
        .keys()
        .filter(|key| !flags.contains_key(key.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        bail!("unknown fields: {}", unknown.join(", "));
    }
    let mut args = Vec::new();
    for (key, value) in document {
        // Every key is known by now.
        let Some(flag) = flags.get(key.as_str()) else {
            continue;
        };
        let texts = match value {
            serde_json::Value::String(s) => vec![s],
            serde_json::Value::Bool(b) => vec![b.to_string()],
            serde_json::Value::Number(n) => vec![n.to_string()],
            serde_json::Value::Array(items) => {
                let items = items
                    .iter()
                    .map(|item| match item {
                        serde_json::Value::String(s) => Ok(s.clone()),
                        serde_json::Value::Number(n) => Ok(n.to_string()),
                        _ => bail!("{key}: a list holds strings"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                // A flag given once per item (`--device`) takes each item as it is, commas
                // and all; any other takes the list as the command line writes it.
                if flag.repeated {
                    items
                } else {
                    vec![items.join(",")]
                }
            }
            serde_json::Value::Null => continue,
            serde_json::Value::Object(_) => bail!("{key}: expected a value, not a map"),
        };
        args.extend(
            texts
                .into_iter()
                .map(|text| format!("--{}={text}", flag.long).into()),
        );
    }
    Ok(args)
}

/// An agent flag a file may set.
struct Flag {
    long: String,
    /// Given once per value, with no delimiter of its own.
    repeated: bool,
}

/// Every agent flag that is a setting, by its key in the file (its long name in camelCase).
fn settable_flags() -> BTreeMap<String, Flag> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long().filter(|long| !NOT_SETTINGS.contains(long))?;
            let repeated = matches!(arg.get_action(), clap::ArgAction::Append)
                && arg.get_value_delimiter().is_none();
            let flag = Flag {
                long: long.to_owned(),
                repeated,
            };
            Some((camel_case(long), flag))
        })
        .collect()
}

/// `max-pods` → `maxPods`.
fn camel_case(long: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in long.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A complete config file: every setting with its help as a comment and its default, or
/// commented out where the default comes from the host or the environment.
pub fn defaults() -> String {
    let mut out = format!(
        "# wasmlet configuration: `wasmlet --config FILE`. Flags on the command line override it.\n\
         apiVersion: {API_VERSION}\nkind: {KIND}\n"
    );
    let command = Cli::command();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long().filter(|l| !NOT_SETTINGS.contains(l)) else {
            continue;
        };
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in help.lines() {
            let _ = writeln!(out, "# {}", line.trim_end());
        }
        let key = camel_case(long);
        match arg.get_default_values().first() {
            Some(value) => {
                let value = value.to_string_lossy();
                let _ = writeln!(out, "{key}: {}", yaml_scalar(&value));
            }
            None => {
                let _ = writeln!(out, "# {key}:");
            }
        }
    }
    out
}

/// `value` as a YAML scalar that reads back as the same string.
fn yaml_scalar(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

fn shown(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn parse(args: &[&str]) -> anyhow::Result<Cli> {
        parse_notes(args).map(|parsed| parsed.cli)
    }

    fn parse_notes(args: &[&str]) -> anyhow::Result<Parsed> {
        parse_cli(args.iter().map(OsString::from).collect())
    }

    const HEADER: &str = "apiVersion: wasmlet.dev/v1alpha1\nkind: WasmletConfiguration\n";

    #[test]
    fn the_file_sets_flags_and_the_command_line_overrides_it() {
        let file = write(&format!(
            "{HEADER}nodeName: from-file\nmaxPods: 7\nnodeLabels: site=lab\n\
             rotateServerCertificates: false\ninsecureRegistries: [\"a:5000\", \"b:5000\"]\n\
             syncFrequency: 10s\n"
        ));
        let path = file.path().to_str().unwrap();
        let cli = parse(&["wasmlet", "--config", path, "--max-pods", "9"]).unwrap();
        assert_eq!(cli.agent.node_name.as_deref(), Some("from-file"));
        assert_eq!(cli.agent.max_pods, 9, "the command line wins");
        assert_eq!(cli.agent.node_labels, "site=lab");
        assert!(!cli.agent.rotate_server_certificates);
        assert_eq!(cli.agent.insecure_registries, ["a:5000", "b:5000"]);
        assert_eq!(cli.agent.sync_frequency.as_secs(), 10);
        // A repeated flag's items stay whole, commas and all.
        let devices = write(&format!(
            "{HEADER}device: [\"a=gpio:sim:1:out\", \"b=sensor:hwmon:x,y/temp1_input\"]\n"
        ));
        let cli = parse(&["wasmlet", "--config", devices.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            cli.agent.devices,
            ["a=gpio:sim:1:out", "b=sensor:hwmon:x,y/temp1_input"]
        );
        let cli = parse(&["wasmlet", &format!("--config={path}"), "--node-name=flag"]).unwrap();
        assert_eq!(cli.agent.node_name.as_deref(), Some("flag"));
    }

    #[test]
    fn a_flag_that_overrides_the_file_is_named_once() {
        let file = write(&format!(
            "{HEADER}maxPods: 7
nodeName: from-file
v: 2
"
        ));
        let path = file.path().to_str().unwrap();
        let parsed = parse_notes(&[
            "wasmlet",
            "--config",
            path,
            "--max-pods",
            "9",
            "--max-pods=10",
            "-v",
            "4",
        ])
        .unwrap();
        assert_eq!(parsed.cli.agent.max_pods, 10);
        assert_eq!(parsed.cli.agent.verbosity, 4);
        assert_eq!(
            parsed.overridden,
            [
                format!("--max-pods on the command line overrides maxPods in config file {path}"),
                format!("--v on the command line overrides v in config file {path}"),
            ]
        );
        let quiet = parse_notes(&["wasmlet", "--config", path, "--port", "1"]).unwrap();
        assert!(quiet.overridden.is_empty(), "{:?}", quiet.overridden);
    }

    #[test]
    fn join_reads_the_file_too() {
        let file = write(&format!(
            "{HEADER}maxPods: 7
dataDir: /var/lib/wasmlet
"
        ));
        let path = file.path().to_str().unwrap();
        let parsed = parse_notes(&[
            "wasmlet",
            "join",
            "10.0.0.1:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--discovery-token-unsafe-skip-ca-verification",
            "--config",
            path,
            "--max-pods=3",
        ])
        .unwrap();
        let Some(crate::cli::Command::Join(join)) = &parsed.cli.command else {
            panic!("not join: {:?}", parsed.cli.command);
        };
        assert_eq!(join.endpoint, "10.0.0.1:6443");
        assert_eq!(join.agent.max_pods, 3);
        assert_eq!(
            join.agent.data_dir.as_deref(),
            Some(Path::new("/var/lib/wasmlet"))
        );
        assert_eq!(parsed.overridden.len(), 1, "{:?}", parsed.overridden);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let file = write(&format!("{HEADER}maxPods: 3\nmaxPod: 4\nnodename: x\n"));
        let err = parse(&["wasmlet", "--config", file.path().to_str().unwrap()]).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("unknown fields: maxPod, nodename"),
            "{message}"
        );
        assert!(message.contains("config file"), "{message}");
    }

    #[test]
    fn the_version_and_kind_are_checked() {
        let file = write("apiVersion: v1\nkind: Pod\n");
        let err = parse(&["wasmlet", "--config", file.path().to_str().unwrap()]).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("apiVersion must be wasmlet.dev/v1alpha1"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_value_names_the_file_and_the_setting() {
        let file = write(&format!("{HEADER}maxPods: lots\n"));
        let err = parse(&["wasmlet", "--config", file.path().to_str().unwrap()]).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("config file") && message.contains("max-pods"),
            "{message}"
        );
        let err = parse(&["wasmlet", "--config", "/nonexistent/wasmlet.yaml"]).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/wasmlet.yaml"));
    }

    #[test]
    fn the_defaults_file_is_complete_and_reads_back_as_the_defaults() {
        let text = defaults();
        for key in settable_flags().keys() {
            assert!(
                text.contains(&format!("{key}:")),
                "{key} missing from:\n{text}"
            );
        }
        let file = write(&text);
        let mut from_file = parse(&["wasmlet", "--config", file.path().to_str().unwrap()]).unwrap();
        from_file.agent.config = None;
        let plain = Cli::try_parse_from(["wasmlet"]).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{plain:?}"));
    }
}
