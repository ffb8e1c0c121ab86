//! Certificates against a real control plane: TLS bootstrap from a bootstrap token, the
//! kubelet-serving CSR flow through `kubectl certificate approve` / `deny`, and reuse of
//! what was issued across a restart, and a client certificate that ends while the node is
//! cut off. The API server runs with
//! `--kubelet-certificate-authority`, so it refuses the kubelet's self-signed certificate.

use std::time::{Duration, Instant};

use certs::csr::{KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER};
use certs::x509::CertInfo;
use e2e::{CloudLink, ControlPlane, Kubectl, WasmletNode, WasmletOptions, wait_for};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::config::Kubeconfig;

async fn wait_ready(kubectl: &Kubectl, node: &WasmletNode, timeout: Duration) {
    node.wait_ready(kubectl, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn condition(csr: &CertificateSigningRequest, type_: &str) -> Option<String> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone().unwrap_or_default())
}

/// The plane's requests for kubelet client certificates.
async fn client_csrs(plane: &ControlPlane) -> Vec<CertificateSigningRequest> {
    let csrs: kube::Api<CertificateSigningRequest> = kube::Api::all(plane.client().await.unwrap());
    csrs.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|csr| csr.spec.signer_name == KUBELET_CLIENT_SIGNER)
        .collect()
}

/// Whether `csr` was made with a bootstrap token.
fn by_bootstrapper(csr: &CertificateSigningRequest) -> bool {
    csr.spec
        .username
        .as_deref()
        .is_some_and(|u| u.starts_with("system:bootstrap:"))
}

/// `kubectl get --raw /api/v1/nodes/<node>/proxy/healthz`: the API server dials the kubelet
/// API and verifies its certificate against the cluster CA.
fn healthz_through_api_server(kubectl: &Kubectl, node: &str) -> anyhow::Result<String> {
    kubectl.run(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/healthz"),
    ])
}

/// Waits until the API server gets `ok` from the node's /healthz.
async fn wait_healthz_through_api_server(kubectl: &Kubectl, node: &WasmletNode, timeout: Duration) {
    wait_for("healthz through the API server", timeout, || {
        let answer = healthz_through_api_server(kubectl, &node.name);
        async move {
            answer
                .map(|text| (text.trim() == "ok").then_some(()))
                .map_err(|e| e.to_string())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));
}

#[tokio::test]
async fn node_joined_with_only_a_bootstrap_kubeconfig_gets_its_own_client_certificate() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let bootstrap = plane
        .bootstrap_kubeconfig()
        .await
        .expect("bootstrap token and RBAC");
    let options = WasmletOptions {
        bootstrap_kubeconfig: Some(bootstrap),
        ..WasmletOptions::named("edge-boot")
    };
    let started = Instant::now();
    let node = WasmletNode::start(&plane, &options).expect("wasmlet starts");
    wait_ready(&kubectl, &node, Duration::from_secs(20)).await;
    eprintln!(
        "bootstrap-only node Ready {:.2} s after start",
        started.elapsed().as_secs_f64()
    );

    // The kubeconfig wasmlet wrote names a client certificate file in its data dir, whose
    // subject is the node identity.
    let written = Kubeconfig::read_from(node.kubeconfig_path()).expect("kubeconfig written");
    let user = written.auth_infos[0].auth_info.clone().unwrap();
    let cert_file = user.client_certificate.expect("a client certificate file");
    assert!(
        cert_file.starts_with(&node.data_dir().join("pki").display().to_string()),
        "{cert_file}"
    );
    assert_eq!(user.client_key.as_deref(), Some(cert_file.as_str()));
    let info = CertInfo::from_pem(&std::fs::read_to_string(&cert_file).unwrap()).unwrap();
    assert_eq!(info.common_name, "system:node:edge-boot");
    assert_eq!(info.organizations, vec!["system:nodes"]);

    // Its request was made by the bootstrap identity and approved by the controller manager.
    let client_csrs = client_csrs(&plane).await;
    assert_eq!(client_csrs.len(), 1, "one request, not one per retry");
    let csr = &client_csrs[0];
    let name = csr.metadata.name.clone().unwrap();
    assert!(name.starts_with("node-csr-"), "{name}");
    assert!(by_bootstrapper(csr), "{:?}", csr.spec.username);
    assert_eq!(condition(csr, "Approved").as_deref(), Some("AutoApproved"));
    assert!(
        csr.status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty())
    );

    // With its own identity, the node asks for its serving certificate too.
    let serving = plane
        .csrs(KUBELET_SERVING_SIGNER, "system:node:edge-boot")
        .await
        .unwrap();
    assert!(!serving.is_empty(), "{}", node.log_tail(20));
}

#[tokio::test]
async fn serving_certificate_is_served_after_kubectl_certificate_approve_and_reused_after_restart()
{
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let options = WasmletOptions::named("edge-serve");
    let mut node = WasmletNode::start(&plane, &options).expect("wasmlet starts");
    wait_ready(&kubectl, &node, Duration::from_secs(15)).await;
    let name = node
        .pending_serving_csr(&plane, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(name.starts_with("kubelet-serving-"), "{name}");

    // Until approval the self-signed certificate is served: the node answers TLS, but the
    // verifying API server refuses it.
    assert!(!node.serves_cert_signed_by(&plane.ca_cert()).await.unwrap());
    let refused = healthz_through_api_server(&kubectl, "edge-serve").unwrap_err();
    assert!(refused.to_string().contains("x509"), "{refused:#}");
    assert!(
        node.log_tail(10_000)
            .contains(&format!("kubectl certificate approve {name}")),
        "the log names the command: {}",
        node.log_tail(20)
    );

    // A restart before approval waits on the same CSR (same pending key, same name: 409).
    assert!(node.terminate().unwrap().success());
    drop(node);
    node = WasmletNode::start(&plane, &options).expect("wasmlet restarts");
    wait_for(
        "the restarted node to find its CSR",
        Duration::from_secs(10),
        || {
            let log = node.log_tail(200);
            async move {
                Ok(log
                    .contains("found the serving certificate request submitted earlier")
                    .then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));
    let csrs = plane
        .csrs(KUBELET_SERVING_SIGNER, "system:node:edge-serve")
        .await
        .unwrap();
    assert_eq!(csrs.len(), 1, "reused, not duplicated");
    assert!(node.log_tail(200).contains(&name));
    wait_ready(&kubectl, &node, Duration::from_secs(15)).await;

    let approved = Instant::now();
    kubectl.run(&["certificate", "approve", &name]).unwrap();
    wait_healthz_through_api_server(&kubectl, &node, Duration::from_secs(10)).await;
    eprintln!(
        "kubectl certificate approve -> issued certificate served: {:.3} s",
        approved.elapsed().as_secs_f64()
    );
    let stored = std::fs::read_to_string(node.serving_cert_path()).expect("cert stored");
    let info = CertInfo::from_pem(&stored).unwrap();
    assert_eq!(info.common_name, "system:node:edge-serve");
    assert!(info.ip_addresses.contains(&"127.0.0.1".parse().unwrap()));

    // A restart serves the stored certificate from the start, without a new CSR.
    assert!(node.terminate().unwrap().success());
    drop(node);
    node = WasmletNode::start(&plane, &options).expect("wasmlet restarts");
    // Served from the start: no approval happens in between.
    node.wait_serving_issued_cert(&plane, Duration::from_secs(5))
        .await
        .unwrap();
    wait_ready(&kubectl, &node, Duration::from_secs(15)).await;
    let csrs = plane
        .csrs(KUBELET_SERVING_SIGNER, "system:node:edge-serve")
        .await
        .unwrap();
    assert_eq!(csrs.len(), 1, "no new CSR after a restart");
    wait_healthz_through_api_server(&kubectl, &node, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_denied_serving_csr_is_logged_and_replaced_by_a_new_one() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let mut node =
        WasmletNode::start(&plane, &WasmletOptions::named("edge-deny")).expect("wasmlet starts");
    let first = node
        .pending_serving_csr(&plane, Duration::from_secs(15))
        .await
        .unwrap();
    kubectl.run(&["certificate", "deny", &first]).unwrap();

    wait_for("wasmlet to log the denial", Duration::from_secs(10), || {
        let log = node.log_tail(200);
        let first = first.clone();
        async move {
            Ok(log
                .lines()
                .any(|l| l.contains("WARN") && l.contains(&first) && l.contains("was denied"))
                .then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));

    let second = node
        .pending_serving_csr(&plane, Duration::from_secs(15))
        .await
        .unwrap();
    assert_ne!(first, second, "a new key, a new request");
    assert!(node.is_running(), "a denial never stops wasmlet");

    // The new request completes the flow as usual.
    kubectl.run(&["certificate", "approve", &second]).unwrap();
    node.wait_serving_issued_cert(&plane, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(node.is_running());
}

/// A node cut off from its API server until after its client certificate ended cannot renew
/// it with its own identity, which the API server no longer accepts: when the link returns it
/// requests a new one with the bootstrap credentials, and goes on as the same node.
#[tokio::test]
async fn a_client_certificate_that_ended_while_cut_off_is_renewed_with_the_bootstrap_credentials() {
    // Long enough for the node to be Ready, on a loaded machine, before its renewal falls
    // due (at 70 to 90% of it).
    const LIFETIME: Duration = Duration::from_secs(45);
    let plane = ControlPlane::start().await.expect("control plane starts");
    let kubectl = Kubectl::new(&plane.admin_kubeconfig());
    let link = CloudLink::to(plane.api_addr()).expect("link");
    let name = "edge-expiring";
    let options = WasmletOptions {
        bootstrap_kubeconfig: Some(
            plane
                .bootstrap_kubeconfig_via(&link.url())
                .await
                .expect("bootstrap token and RBAC"),
        ),
        ..WasmletOptions::named(name)
    };
    let data_dir = plane.dir().join("nodes").join(name);
    let kubeconfig = plane.dir().join("nodes").join(format!("{name}.kubeconfig"));
    let ends = plane
        .node_with_expiring_certificate(name, &data_dir, &kubeconfig, &link.url(), LIFETIME)
        .expect("a short-lived client certificate");
    let node = WasmletNode::start(&plane, &options).expect("wasmlet starts");
    assert_eq!(
        node.kubeconfig_path(),
        kubeconfig,
        "the node uses the kubeconfig made for it"
    );
    wait_ready(&kubectl, &node, Duration::from_secs(20)).await;
    let current = data_dir.join("pki").join("kubelet-client-current.pem");
    let presented = || CertInfo::from_pem(&std::fs::read_to_string(&current).unwrap()).unwrap();
    assert_eq!(
        presented().not_after,
        ends,
        "renewed before the link was cut"
    );
    assert!(
        client_csrs(&plane).await.is_empty(),
        "the renewal began before the link was cut"
    );

    link.cut();
    wait_for(
        "the node to find its client certificate ended",
        Duration::from_secs(90),
        || {
            let told = node
                .log_tail(400)
                .contains("expired before it could be renewed");
            async move { Ok(told.then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));
    assert!(std::time::SystemTime::now() >= ends);

    link.restore();
    let restored = jiff::Timestamp::now();
    let renewed = wait_for("a new client certificate", Duration::from_secs(90), || {
        let info = CertInfo::from_pem(&std::fs::read_to_string(&current).unwrap_or_default());
        async move { Ok(info.ok().filter(|info| info.not_after > ends)) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));
    assert_eq!(renewed.common_name, format!("system:node:{name}"));

    // Asked for by the bootstrap identity, and approved as a bootstrapper's request.
    let by_bootstrap: Vec<_> = client_csrs(&plane)
        .await
        .into_iter()
        .filter(by_bootstrapper)
        .collect();
    assert_eq!(by_bootstrap.len(), 1, "{by_bootstrap:?}");
    assert_eq!(
        condition(&by_bootstrap[0], "Approved").as_deref(),
        Some("AutoApproved")
    );

    // And the node goes on as itself: its Lease is renewed with the new certificate.
    wait_for(
        "the node's Lease renewed after the link returned",
        Duration::from_secs(60),
        || {
            let renew = kubectl.run(&[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                name,
                "-o",
                "jsonpath={.spec.renewTime}",
            ]);
            async move {
                let renew = renew.map_err(|e| e.to_string())?;
                let at: jiff::Timestamp =
                    renew.trim().parse().map_err(|e| format!("{renew}: {e}"))?;
                Ok((at > restored).then_some(()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nwasmlet log:\n{}", node.log_tail(30)));
}
