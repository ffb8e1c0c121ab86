//! Container probes as the kubelet runs them: a startup, a liveness and a readiness probe per
//! container, each an `httpGet` or a `tcpSocket` against the pod's IP (the node's), with
//! every timing field. `exec` and `grpc` probes cannot run for a Wasm pod (there is no
//! process to exec, no gRPC health server in a guest) and are refused at admission, as are
//! HTTPS probes for now.
//!
//! This module reads the spec, runs one check, and counts results into a verdict; the pod's
//! worker owns the timers and acts on verdicts (ready, started, kill and restart).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::admission::Rejection;

/// The kubelet's probe client identity.
const USER_AGENT: &str = "kube-probe/1.20";

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As the kubelet's events name it ("Liveness probe failed: …").
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Liveness => "Liveness",
            Self::Readiness => "Readiness",
        }
    }
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `GET http://host:port/path` with these headers; 200-399 passes.
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connection to `host:port` passes.
    Tcp { host: Option<String>, port: u16 },
}

/// One probe, read from the spec with the kubelet's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) action: Action,
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
    /// `terminationGracePeriodSeconds` on the probe: the grace a kill for it gets.
    pub(crate) termination_grace: Option<Duration>,
}

/// A container's probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Probes {
    pub(crate) startup: Option<Probe>,
    pub(crate) liveness: Option<Probe>,
    pub(crate) readiness: Option<Probe>,
}

impl Probes {
    /// The probes of `container`, or why they cannot run here.
    pub(crate) fn of(container: &Container) -> Result<Self, Rejection> {
        let read = |kind: Kind, spec: &Option<ProbeSpec>| {
            spec.as_ref()
                .map(|spec| Probe::read(container, kind, spec))
                .transpose()
        };
        Ok(Self {
            startup: read(Kind::Startup, &container.startup_probe)?,
            liveness: read(Kind::Liveness, &container.liveness_probe)?,
            readiness: read(Kind::Readiness, &container.readiness_probe)?,
        })
    }

    pub(crate) fn get(&self, kind: Kind) -> Option<&Probe> {
        match kind {
            Kind::Startup => self.startup.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
            Kind::Readiness => self.readiness.as_ref(),
        }
    }
}

impl Probe {
    fn read(container: &Container, kind: Kind, spec: &ProbeSpec) -> Result<Self, Rejection> {
        let refuse = |what: String| Rejection {
            reason: "UnsupportedProbe".into(),
            message: format!(
                "container {:?}: its {} probe {what}",
                container.name,
                kind.label().to_lowercase()
            ),
        };
        let action = if let Some(http) = &spec.http_get {
            if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                return Err(refuse(
                    "uses HTTPS, which wasmlet does not probe yet; use HTTP or tcpSocket".into(),
                ));
            }
            Action::Http {
                host: http.host.clone().filter(|h| !h.is_empty()),
                port: port(container, &http.port).map_err(&refuse)?,
                path: http
                    .path
                    .clone()
                    .filter(|p| p.starts_with('/'))
                    .unwrap_or_else(|| "/".into()),
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(tcp) = &spec.tcp_socket {
            Action::Tcp {
                host: tcp.host.clone().filter(|h| !h.is_empty()),
                port: port(container, &tcp.port).map_err(&refuse)?,
            }
        } else if spec.exec.is_some() {
            return Err(refuse(
                "uses exec, which cannot run in a Wasm pod (there is no process to run a command in); use httpGet or tcpSocket".into(),
            ));
        } else if spec.grpc.is_some() {
            return Err(refuse(
                "uses grpc, which wasmlet does not probe; use httpGet or tcpSocket".into(),
            ));
        } else {
            return Err(refuse("has no action (httpGet or tcpSocket)".into()));
        };
        let seconds = |value: Option<i32>, default: u64, least: u64| {
            Duration::from_secs(
                value
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(default)
                    .max(least),
            )
        };
        let count = |value: Option<i32>, default: u32| {
            value
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Ok(Self {
            action,
            initial_delay: seconds(spec.initial_delay_seconds, 0, 0),
            period: seconds(spec.period_seconds, 10, 1),
            timeout: seconds(spec.timeout_seconds, 1, 1),
            // Liveness and startup probes must succeed once (the API enforces it).
            success_threshold: match kind {
                Kind::Readiness => count(spec.success_threshold, 1),
                Kind::Liveness | Kind::Startup => 1,
            },
            failure_threshold: count(spec.failure_threshold, 3),
            termination_grace: spec
                .termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        })
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("names port {name:?}, which the container does not declare"))?,
    };
    super::admission::port_number(number)
        .ok_or_else(|| format!("has port {number}, which is not a port number (1-65535)"))
}

/// Runs `action` once against `pod_ip` within `timeout`; the error says why it failed, in
/// the words of the kubelet's events where it has them.
pub(crate) async fn check(
    action: &Action,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, check_untimed(action, pod_ip)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} timed out after {}s",
            describe(action, pod_ip),
            timeout.as_secs()
        )),
    }
}

fn describe(action: &Action, pod_ip: IpAddr) -> String {
    match action {
        Action::Http {
            host, port, path, ..
        } => format!("Get \"http://{}:{port}{path}\"", host_or(host, pod_ip)),
        Action::Tcp { host, port } => format!("dial tcp {}:{port}", host_or(host, pod_ip)),
    }
}

fn host_or(host: &Option<String>, pod_ip: IpAddr) -> String {
    host.clone().unwrap_or_else(|| pod_ip.to_string())
}

async fn check_untimed(action: &Action, pod_ip: IpAddr) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", describe(action, pod_ip));
    match action {
        Action::Tcp { host, port } => {
            tokio::net::TcpStream::connect((host_or(host, pod_ip), *port))
                .await
                .map(drop)
                .map_err(|e| fail(&e))
        }
        Action::Http {
            host,
            port,
            path,
            headers,
        } => {
            let authority = format!("{}:{port}", host_or(host, pod_ip));
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| fail(&e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| fail(&e))?;
            let mut request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, &authority)
                .header(hyper::header::USER_AGENT, USER_AGENT)
                .header(hyper::header::ACCEPT, "*/*");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let request = request.body(Empty::<Bytes>::new()).map_err(|e| fail(&e))?;
            // The connection is driven beside the request, and dropped with this future. It
            // may finish in the same poll that hands over the response, which is then waiting.
            let send = sender.send_request(request);
            tokio::pin!(send);
            let response = tokio::select! {
                biased;
                response = &mut send => response,
                ended = connection => match ended {
                    Ok(()) => send.await,
                    Err(e) => return Err(fail(&e)),
                },
            }
            .map_err(|e| fail(&e))?;
            let status = response.status().as_u16();
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
    }
}

/// What a run of results means for the container, once a threshold is crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `successThreshold` passes in a row.
    Passed,
    /// `failureThreshold` failures in a row.
    Failed,
}

/// One probe of one container instance: when it is due and the run of results so far.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    pub(crate) due: Option<Instant>,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// A tracker for a probe first due after its initial delay from `started`.
    pub(crate) fn new(probe: &Probe, started: Instant) -> Self {
        Self {
            due: Some(started + probe.initial_delay),
            successes: 0,
            failures: 0,
        }
    }

    /// Counts a result at `now`, schedules the next check, and returns a verdict when a
    /// threshold is reached (every time it stays reached, so a flapping probe is seen).
    pub(crate) fn record(&mut self, probe: &Probe, passed: bool, now: Instant) -> Option<Verdict> {
        self.due = Some(now + probe.period);
        if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= probe.success_threshold).then_some(Verdict::Passed)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= probe.failure_threshold).then_some(Verdict::Failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };

    use super::*;

    fn container(probe: ProbeSpec) -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                name: Some("http".into()),
                ..Default::default()
            }]),
            liveness_probe: Some(probe),
            ..Default::default()
        }
    }

    fn http(port: IntOrString) -> ProbeSpec {
        ProbeSpec {
            http_get: Some(HTTPGetAction {
                port,
                path: Some("/healthz".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "1".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn probes_read_with_the_kubelets_defaults_and_named_ports() {
        let probes = Probes::of(&container(http(IntOrString::String("http".into())))).unwrap();
        let liveness = probes.liveness.unwrap();
        assert_eq!(
            liveness.action,
            Action::Http {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        assert_eq!(liveness.period, Duration::from_secs(10));
        assert_eq!(liveness.timeout, Duration::from_secs(1));
        assert_eq!(liveness.initial_delay, Duration::ZERO);
        assert_eq!(
            (liveness.success_threshold, liveness.failure_threshold),
            (1, 3)
        );
        let timed = ProbeSpec {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(9000),
                ..Default::default()
            }),
            initial_delay_seconds: Some(2),
            period_seconds: Some(3),
            timeout_seconds: Some(4),
            success_threshold: Some(5),
            failure_threshold: Some(6),
            termination_grace_period_seconds: Some(7),
            ..Default::default()
        };
        let mut c = container(timed.clone());
        c.readiness_probe = Some(timed);
        let probes = Probes::of(&c).unwrap();
        let readiness = probes.readiness.unwrap();
        assert_eq!(
            readiness.action,
            Action::Tcp {
                host: None,
                port: 9000
            }
        );
        assert_eq!(
            (readiness.initial_delay, readiness.period, readiness.timeout),
            (
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4)
            )
        );
        assert_eq!(
            (readiness.success_threshold, readiness.failure_threshold),
            (5, 6)
        );
        assert_eq!(readiness.termination_grace, Some(Duration::from_secs(7)));
        // A liveness probe passes on one success whatever the spec says.
        assert_eq!(probes.liveness.unwrap().success_threshold, 1);
    }

    #[test]
    fn probes_that_cannot_run_for_a_wasm_pod_are_refused_saying_why() {
        let cases = [
            (
                ProbeSpec {
                    exec: Some(ExecAction {
                        command: Some(vec!["cat".into()]),
                    }),
                    ..Default::default()
                },
                "uses exec",
            ),
            (
                ProbeSpec {
                    grpc: Some(GRPCAction {
                        port: 9000,
                        service: None,
                    }),
                    ..Default::default()
                },
                "uses grpc",
            ),
            (
                http(IntOrString::String("metrics".into())),
                "names port \"metrics\"",
            ),
            (http(IntOrString::Int(0)), "not a port number"),
            (ProbeSpec::default(), "has no action"),
        ];
        for (spec, why) in cases {
            let err = Probes::of(&container(spec)).unwrap_err();
            assert_eq!(err.reason, "UnsupportedProbe");
            assert!(
                err.message
                    .starts_with("container \"web\": its liveness probe"),
                "{}",
                err.message
            );
            assert!(err.message.contains(why), "{why}: {}", err.message);
        }
        let mut https = http(IntOrString::Int(8080));
        if let Some(get) = https.http_get.as_mut() {
            get.scheme = Some("HTTPS".into());
        }
        assert!(
            Probes::of(&container(https))
                .unwrap_err()
                .message
                .contains("HTTPS")
        );
    }

    #[test]
    fn thresholds_turn_runs_of_results_into_verdicts() {
        let mut probe = Probes::of(&container(http(IntOrString::Int(8080))))
            .unwrap()
            .liveness
            .unwrap();
        probe.success_threshold = 2;
        let t0 = Instant::now();
        let mut tracker = Tracker::new(&probe, t0);
        assert_eq!(tracker.due, Some(t0));
        assert_eq!(tracker.record(&probe, true, t0), None);
        assert_eq!(tracker.due, Some(t0 + probe.period));
        assert_eq!(tracker.record(&probe, true, t0), Some(Verdict::Passed));
        assert_eq!(tracker.record(&probe, false, t0), None);
        assert_eq!(tracker.record(&probe, false, t0), None);
        // A pass in between starts the count again.
        assert_eq!(tracker.record(&probe, true, t0), None);
        for _ in 0..2 {
            assert_eq!(tracker.record(&probe, false, t0), None);
        }
        assert_eq!(tracker.record(&probe, false, t0), Some(Verdict::Failed));
        assert_eq!(tracker.record(&probe, false, t0), Some(Verdict::Failed));
    }

    #[tokio::test]
    async fn checks_pass_and_fail_as_the_kubelets_do() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A tiny HTTP server: 200 for /ok, 500 otherwise, and it records what it was sent.
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let n = stream.read(&mut request).await.unwrap();
                let text = String::from_utf8_lossy(&request[..n]).into_owned();
                let status = if text.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "500 Oops"
                };
                let _ = stream
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
                seen.push(text);
            }
            seen
        });
        let local = IpAddr::from([127, 0, 0, 1]);
        let get = |path: &str| Action::Http {
            host: None,
            port,
            path: path.into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        };
        let second = Duration::from_secs(1);
        assert_eq!(check(&get("/ok"), local, second).await, Ok(()));
        assert_eq!(
            check(&get("/bad"), local, second).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let seen = server.await.unwrap();
        assert!(
            seen[0].contains("user-agent: kube-probe/1.20"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("x-probe: yes"), "{}", seen[0]);
        // Nothing listens now: the TCP and HTTP checks both fail, naming the address.
        let err = check(&Action::Tcp { host: None, port }, local, second)
            .await
            .unwrap_err();
        assert!(
            err.starts_with(&format!("dial tcp 127.0.0.1:{port}")),
            "{err}"
        );
        // A listener that never answers: the timeout says so.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let action = Action::Http {
            host: None,
            port: silent_port,
            path: "/".into(),
            headers: vec![],
        };
        let err = check(&action, local, second).await.unwrap_err();
        assert!(err.ends_with("timed out after 1s"), "{err}");
        drop(silent);
    }
}
