//! Pulling every shape of Wasm OCI artifact from a real registry (Debian's docker-registry),
//! pushing with `wasmlet push`, and each bad input the pull path must survive.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use e2e::oci_layout::{
    Blob, Image, empty_component, image_config, publish_image, publish_with_skopeo, tar_gz,
    wasm_module_of_size,
};
use e2e::{REGISTRY_PASSWORD, REGISTRY_USER, Registry, TokenService, wasmlet_binary};
use oci::{
    Error, PullPolicy, PullRequest, Puller, PullerConfig, RegistryAuth, RegistryCredentials, Shape,
    Store, WasmKind,
};

fn puller(dir: &Path, registry: &str, max_layer_bytes: u64) -> Puller {
    let store = Arc::new(Store::open(&dir.join("store")).unwrap());
    Puller::new(
        store,
        PullerConfig {
            insecure_registries: vec![registry.to_string()],
            max_layer_bytes,
        },
    )
}

fn request(image: &str, policy: PullPolicy) -> PullRequest<'_> {
    PullRequest {
        image,
        policy,
        auth: RegistryAuth::Anonymous,
        entry: None,
        on_verified: None,
    }
}

/// `wasmlet push` as a person runs it; returns what it printed.
fn push(dir: &Path, bytes: &[u8], image: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let out = try_push(dir, bytes, image, extra, env);
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `wasmlet push`, successful or not. Registry credentials come only from `env`.
fn try_push(
    dir: &Path,
    bytes: &[u8],
    image: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let file = dir.join(format!(
        "{}.wasm",
        oci::store::digest_of(bytes).trim_start_matches("sha256:")
    ));
    std::fs::write(&file, bytes).unwrap();
    Command::new(wasmlet_binary().unwrap())
        .arg("push")
        .arg(&file)
        .arg(image)
        .arg("--insecure")
        .args(extra)
        .env_remove("WASMLET_REGISTRY_USERNAME")
        .env_remove("WASMLET_REGISTRY_PASSWORD")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// The manifest the registry holds for `image`, read with skopeo rather than oci-client, so
/// what checks the push shares no code with what did it.
fn registry_manifest(image: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn module(tag: u8) -> Vec<u8> {
    let mut bytes = wasm_module_of_size(64);
    let last = bytes.len() - 1;
    bytes[last] = tag;
    bytes
}

#[tokio::test]
async fn pushed_modules_and_components_round_trip_in_every_push_format() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    // The media types are spelled out rather than taken from `oci::media`, so a wrong
    // constant there cannot make this agree with itself.
    let (cncf_config, cncf_layer) = ("application/vnd.wasm.config.v0+json", "application/wasm");
    let component_layer = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
    let cases = [
        (
            module(1),
            Some("cncf"),
            Shape::CncfArtifact,
            WasmKind::Module,
            (cncf_config, cncf_layer),
        ),
        (
            module(2),
            Some("wasm-to-oci"),
            Shape::WasmToOci,
            WasmKind::Module,
            (
                "application/vnd.wasm.config.v1+json",
                "application/vnd.wasm.content.layer.v1+wasm",
            ),
        ),
        (
            empty_component(),
            Some("cncf"),
            Shape::ComponentLayer,
            WasmKind::Component,
            (cncf_config, component_layer),
        ),
        // No --format: the CNCF shape is the default, with the component layer type for a
        // component.
        (
            module(12),
            None,
            Shape::CncfArtifact,
            WasmKind::Module,
            (cncf_config, cncf_layer),
        ),
        (
            empty_component(),
            None,
            Shape::ComponentLayer,
            WasmKind::Component,
            (cncf_config, component_layer),
        ),
    ];
    let puller = puller(dir.path(), &host, 1 << 20);
    for (i, (bytes, format, shape, kind, (config_type, layer_type))) in
        cases.into_iter().enumerate()
    {
        let image = format!("{host}/demo/round-trip-{i}:v1");
        let label = format.unwrap_or("no --format");
        let extra = match format {
            Some(format) => vec!["--format", format],
            None => vec![],
        };
        let said = push(dir.path(), &bytes, &image, &extra, &[]);
        assert!(said.contains("pushed"), "{said}");

        let manifest = registry_manifest(&image);
        assert_eq!(
            manifest["config"]["mediaType"], config_type,
            "{label}: {manifest}"
        );
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        assert_eq!(layers.len(), 1, "{label}: {manifest}");
        assert_eq!(layers[0]["mediaType"], layer_type, "{label}: {manifest}");
        assert_eq!(
            layers[0]["digest"],
            oci::store::digest_of(&bytes).as_str(),
            "{label}: {manifest}"
        );

        let artifact = puller
            .pull(&request(&image, PullPolicy::IfNotPresent))
            .await
            .unwrap();
        assert_eq!((artifact.shape, artifact.kind), (shape, kind), "{label}");
        assert_eq!(std::fs::read(&artifact.wasm_path).unwrap(), bytes);
        assert_eq!(artifact.wasm_digest, oci::store::digest_of(&bytes));
    }
}

#[tokio::test]
async fn compat_image_yields_the_wasm_its_entrypoint_names_through_layers_and_symlinks() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = module(7);
    let image = format!("{}/demo/compat:v1", registry.host());
    let layers = vec![
        Blob::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            tar_gz(&[("app/main.wasm", b"stale")], &[]).unwrap(),
        ),
        Blob::new(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            tar_gz(
                &[("app/main.wasm", &wasm)],
                &[("wasi_example_main.wasm", "/app/main.wasm")],
            )
            .unwrap(),
        ),
    ];
    publish_image(
        &dir.path().join("layout"),
        image_config(&["/wasi_example_main.wasm"], &["--flag"]).unwrap(),
        layers,
        &image,
    )
    .unwrap();
    let puller = puller(dir.path(), &registry.host(), 1 << 20);
    let artifact = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(artifact.shape, Shape::Compat);
    assert_eq!(
        std::fs::read(&artifact.wasm_path).unwrap(),
        wasm,
        "the later layer wins"
    );
    assert_eq!(artifact.entrypoint, ["/wasi_example_main.wasm"]);
    assert_eq!(artifact.args, ["--flag"]);
    assert!(artifact.env.contains(&"GREETING=hello".to_string()));

    // The container's command overrides the image's entrypoint.
    let overridden = puller
        .pull(&PullRequest {
            entry: Some("/app/main.wasm"),
            ..request(&image, PullPolicy::IfNotPresent)
        })
        .await
        .unwrap();
    assert_eq!(overridden.wasm_digest, artifact.wasm_digest);
}

#[tokio::test]
async fn image_index_resolves_to_its_wasm_platform_or_says_which_platforms_it_has() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wasm = module(9);
    let linux = || Image {
        config: image_config(&["/bin/hello"], &[]).unwrap(),
        layers: vec![Blob::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            tar_gz(&[("bin/hello", b"\x7fELF\x02\x01\x01\0")], &[]).unwrap(),
        )],
        platform: Some(("linux".into(), "amd64".into())),
    };
    let wasi = Image {
        config: Blob::new(
            "application/vnd.wasm.config.v0+json",
            br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec(),
        ),
        layers: vec![Blob::new("application/wasm", wasm.clone())],
        platform: Some(("wasip1".into(), "wasm".into())),
    };
    let multi = format!("{}/demo/multi:v1", registry.host());
    publish_with_skopeo(&dir.path().join("multi"), &[linux(), wasi], &multi).unwrap();
    let arm = Image {
        platform: Some(("linux".into(), "arm64".into())),
        ..linux()
    };
    let linux_only = format!("{}/demo/linux-only:v1", registry.host());
    publish_with_skopeo(&dir.path().join("linux"), &[linux(), arm], &linux_only).unwrap();

    let puller = puller(dir.path(), &registry.host(), 1 << 20);
    let artifact = puller
        .pull(&request(&multi, PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&artifact.wasm_path).unwrap(), wasm);
    // `Always` asks the registry what the tag names now (the index's digest) and, that
    // being what it pulled, fetches no manifest again.
    let manifest_gets = || {
        registry
            .log()
            .lines()
            .filter(|l| l.contains("GET /v2/demo/multi/manifests/"))
            .count()
    };
    let before = manifest_gets();
    let again = puller
        .pull(&request(&multi, PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(again.wasm_digest, artifact.wasm_digest);
    assert_eq!(manifest_gets(), before, "{}", registry.log());
    let err = puller
        .pull(&request(&linux_only, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoWasmPlatform { .. }), "{err}");
    assert!(
        err.to_string().contains("linux/amd64") && err.to_string().contains("linux/arm64"),
        "{err}"
    );
}

#[tokio::test]
async fn linux_image_is_not_wasm_and_the_error_names_the_media_types() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/library/busybox:1", registry.host());
    publish_image(
        &dir.path().join("layout"),
        image_config(&["/bin/sh"], &[]).unwrap(),
        vec![Blob::new(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            tar_gz(&[("bin/sh", b"\x7fELF\x02\x01\x01\0\0\0\0\0")], &[]).unwrap(),
        )],
        &image,
    )
    .unwrap();
    let err = puller(dir.path(), &registry.host(), 1 << 20)
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::NotWasm { .. }), "{message}");
    assert!(message.contains("not a Wasm image"), "{message}");
    assert!(message.contains("ELF"), "{message}");
    assert!(
        message.contains("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_repository_or_tag_is_not_found_and_a_dead_registry_is_unreachable() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    push(
        dir.path(),
        &module(3),
        &format!("{host}/demo/known:v1"),
        &[],
        &[],
    );
    let puller = puller(dir.path(), &host, 1 << 20);
    for image in [
        format!("{host}/demo/unknown:v1"),
        format!("{host}/demo/known:nope"),
    ] {
        let err = puller
            .pull(&request(&image, PullPolicy::IfNotPresent))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{image}: {err}");
        assert_eq!(err.kubelet_reason(), "ErrImagePull");
    }
    drop(registry);
    let err = puller
        .pull(&request(
            &format!("{host}/demo/known:v1"),
            PullPolicy::IfNotPresent,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("registry {host} is unreachable: Connection refused (os error 111)"),
        "the message says why"
    );
    assert!(err.is_transient());
    let err = puller
        .pull(&request("Not A Reference!", PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert_eq!(err.kubelet_reason(), "InvalidImageName");
}

#[tokio::test]
async fn private_registry_takes_the_pull_secret_and_refuses_anyone_else() {
    let registry = Registry::start_with_auth().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    let image = format!("{host}/private/app:v1");
    let wasm = module(4);
    // A push is refused without the password, and the message says it was a push.
    for env in [
        &[][..],
        &[
            ("WASMLET_REGISTRY_USERNAME", REGISTRY_USER),
            ("WASMLET_REGISTRY_PASSWORD", "wrong"),
        ][..],
    ] {
        let out = try_push(dir.path(), &wasm, &image, &[], env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("not authorized to push {image}")),
            "{stderr}"
        );
    }
    push(
        dir.path(),
        &wasm,
        &image,
        &[],
        &[
            ("WASMLET_REGISTRY_USERNAME", REGISTRY_USER),
            ("WASMLET_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
        ],
    );
    let puller = puller(dir.path(), &host, 1 << 20);
    let anonymous = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(
        matches!(anonymous, Error::Unauthorized { .. }),
        "{anonymous}"
    );
    let wrong = PullRequest {
        auth: RegistryAuth::Basic(REGISTRY_USER.into(), "wrong".into()),
        ..request(&image, PullPolicy::IfNotPresent)
    };
    let err = puller.pull(&wrong).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("imagePullSecrets"), "{err}");

    let mut creds = RegistryCredentials::default();
    let secret = format!(
        r#"{{"auths":{{"{host}":{{"username":"{REGISTRY_USER}","password":"{REGISTRY_PASSWORD}"}}}}}}"#
    );
    creds
        .add_secret(
            oci::auth::DOCKER_CONFIG_JSON,
            &BTreeMap::from([(".dockerconfigjson".to_string(), secret.into_bytes())]),
        )
        .unwrap();
    let artifact = puller
        .pull(&PullRequest {
            auth: creds.for_registry(&host),
            ..request(&image, PullPolicy::IfNotPresent)
        })
        .await
        .unwrap();
    assert_eq!(std::fs::read(&artifact.wasm_path).unwrap(), wasm);
}

/// A registry whose certificate comes from a CA the node does not trust (this test's
/// process has only the system's CA certificates) is not spoken to, and the error says why.
#[tokio::test]
async fn registry_with_an_untrusted_certificate_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenService::start(dir.path()).unwrap();
    let registry = Registry::start_with_token_service(&tokens).unwrap();
    let image = format!("{}/private/app:v1", registry.host());
    let puller = puller(dir.path(), "insecure.invalid:5000", 1 << 20);
    let err = puller
        .pull(&request(&image, PullPolicy::Always))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UntrustedCertificate { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the certificate of registry {} is refused: invalid peer certificate: UnknownIssuer (the CA that issued it is not among the node's CA certificates)",
            registry.host()
        )
    );
    assert_eq!(err.kubelet_reason(), "ErrImagePull");
    assert!(tokens.issued().is_empty(), "{:?}", tokens.issued());
}

#[tokio::test]
async fn tampered_blob_fails_verification_and_nothing_is_stored() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/demo/tampered:v1", registry.host());
    let wasm = module(5);
    push(dir.path(), &wasm, &image, &[], &[]);
    let digest = oci::store::digest_of(&wasm);
    let mut evil = wasm.clone();
    let last = evil.len() - 1;
    evil[last] ^= 0xff;
    std::fs::write(registry.blob_data_path(&digest), &evil).unwrap();

    let puller = puller(dir.path(), &registry.host(), 1 << 20);
    let err = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        err.to_string().contains(hex)
            && err
                .to_string()
                .contains(oci::store::digest_of(&evil).trim_start_matches("sha256:")),
        "the message names the promised digest and what the bytes hash to: {err}"
    );
    assert!(
        !puller.store().has_blob(&digest),
        "unverified content never enters the store"
    );
    assert!(
        std::fs::read_dir(dir.path().join("store/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no leftovers"
    );
}

#[tokio::test]
async fn layer_over_the_size_limit_is_refused_before_it_fills_the_disk() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/demo/big:v1", registry.host());
    let wasm = wasm_module_of_size(64 * 1024);
    push(dir.path(), &wasm, &image, &[], &[]);
    let puller = puller(dir.path(), &registry.host(), 16 * 1024);
    let err = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LayerTooLarge { .. }), "{err}");
    assert!(!puller.store().has_blob(&oci::store::digest_of(&wasm)));
}

#[tokio::test]
async fn compat_layers_that_escape_the_root_and_invalid_wasm_are_refused() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = registry.host();
    let wasm = module(6);
    let escapes: [(&str, Vec<u8>); 3] = [
        ("dotdot", tar_gz(&[("../evil.wasm", &wasm)], &[]).unwrap()),
        ("absolute", tar_gz(&[("/evil.wasm", &wasm)], &[]).unwrap()),
        (
            "symlink",
            tar_gz(&[], &[("evil.wasm", "../../../etc/passwd")]).unwrap(),
        ),
    ];
    let puller = puller(dir.path(), &host, 1 << 20);
    for (name, layer) in escapes {
        let image = format!("{host}/demo/escape-{name}:v1");
        publish_image(
            &dir.path().join(name),
            image_config(&["/evil.wasm"], &[]).unwrap(),
            vec![Blob::new(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                layer,
            )],
            &image,
        )
        .unwrap();
        let err = puller
            .pull(&request(&image, PullPolicy::IfNotPresent))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PathEscape { .. }), "{name}: {err}");
    }

    let image = format!("{host}/demo/garbage:v1");
    publish_image(
        &dir.path().join("garbage"),
        Blob::new("application/vnd.wasm.config.v0+json", b"{}".to_vec()),
        vec![Blob::new("application/wasm", b"this is not wasm".to_vec())],
        &image,
    )
    .unwrap();
    let err = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidWasm { .. }), "{err}");
    assert!(err.to_string().contains("not the Wasm magic"), "{err}");
}

#[tokio::test]
async fn concurrent_pulls_of_one_reference_download_it_once() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/demo/popular:v1", registry.host());
    let wasm = wasm_module_of_size(256 * 1024);
    push(dir.path(), &wasm, &image, &[], &[]);
    let puller = Arc::new(puller(dir.path(), &registry.host(), 1 << 20));
    let mut pulls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let puller = puller.clone();
        let image = image.clone();
        pulls.spawn(async move {
            puller
                .pull(&request(&image, PullPolicy::IfNotPresent))
                .await
        });
    }
    let digests: Vec<String> = pulls
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap().wasm_digest)
        .collect();
    assert!(digests.iter().all(|d| *d == oci::store::digest_of(&wasm)));
    assert_eq!(
        registry.blob_gets(&oci::store::digest_of(&wasm)),
        1,
        "{}",
        registry.log()
    );
}

#[tokio::test]
async fn pull_policies_behave_as_the_kubelets() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("{}/demo/moving:latest", registry.host());
    let puller = puller(dir.path(), &registry.host(), 1 << 20);

    let err = puller
        .pull(&request(&image, PullPolicy::Never))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NeverPull { .. }), "{err}");
    assert_eq!(err.kubelet_reason(), "ErrImageNeverPull");

    let (first, second) = (module(10), module(11));
    push(dir.path(), &first, &image, &[], &[]);
    let a = puller
        .pull(&request(&image, PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(a.wasm_digest, oci::store::digest_of(&first));

    push(dir.path(), &second, &image, &[], &[]);
    let cached = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(
        cached.wasm_digest, a.wasm_digest,
        "IfNotPresent keeps the local artifact"
    );
    let moved = puller
        .pull(&request(&image, PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(
        moved.wasm_digest,
        oci::store::digest_of(&second),
        "Always follows the tag"
    );

    drop(registry);
    let offline = puller
        .pull(&request(&image, PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(
        offline.wasm_digest, moved.wasm_digest,
        "a cached artifact needs no registry"
    );
    assert!(
        puller
            .pull(&request(&image, PullPolicy::Never))
            .await
            .is_ok()
    );
    let err = puller
        .pull(&request(&image, PullPolicy::Always))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
}

#[tokio::test]
async fn push_shows_progress_at_a_terminal_for_a_large_file_and_is_quiet_otherwise() {
    let registry = Registry::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm_module_of_size(12 << 20);
    let file = dir.path().join("large.wasm");
    std::fs::write(&file, &bytes).unwrap();
    let image = format!("{}/demo/large:v1", registry.host());

    // Under a pseudo-terminal (util-linux's `script`), the bar is drawn on it.
    let command = format!(
        "{} push {} {image}-tty --insecure",
        wasmlet_binary().unwrap().display(),
        file.display()
    );
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("large.wasm"), "{screen}");
    assert!(
        screen.contains("12.00 MiB"),
        "the size and progress are shown: {screen}"
    );
    assert!(screen.contains("pushed "), "{screen}");

    // Piped, only the one summary line, and nothing on stderr.
    let out = Command::new(wasmlet_binary().unwrap())
        .arg("push")
        .arg(&file)
        .arg(&image)
        .arg("--insecure")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    // What was pushed in pieces is the file, whole.
    let manifest = registry_manifest(&image);
    assert_eq!(
        manifest["layers"][0]["digest"].as_str(),
        Some(oci::store::digest_of(&bytes).as_str())
    );
    assert_eq!(
        manifest["layers"][0]["size"].as_u64(),
        Some(bytes.len() as u64)
    );
}
