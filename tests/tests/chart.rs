//! The Helm chart in `charts/mesh`, validated offline by `tests/chart/validate.py`: rendered and
//! linted with helm-python-sdk (Helm's Go SDK as a library, so no `helm` binary), every manifest
//! checked with `kubernetes-validate --strict`, scanned with checkov (and the Dockerfile, once it
//! exists), and values typos shown to be refused naming the key.
//!
//! The chart's other half is `mesh-ctl k8s`, which prints the Secrets and the ConfigMap the chart
//! mounts: for a default and a customised release, its manifests pass `kubernetes-validate
//! --strict` and are exactly the objects and keys the rendered StatefulSet mounts
//! (`tests/chart/contract.py`); here the certificates are checked to name each pod as the
//! rendered chart addresses it, the layout to be signed by the directory's control key with the
//! chart's peer names, the keys to be usable. Bad flags are refused naming the flag, and a CA
//! rotation of a Kubernetes directory refuses to finish while a node's certificate is from the old
//! CA.
//!
//! The Python tooling (`tests/python/requirements-chart.txt`, checkov and friends) lives in its own
//! venv, `target/py-chart-venv`, apart from the grpcio one the client test uses. Needs python3 with
//! venv and PyPI on first use; `NEXTEST_PROFILE=no-python` leaves these two tests out.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// A Python interpreter with `tests/python/requirements-chart.txt` installed, in its own venv.
fn chart_python() -> PathBuf {
    mesh_tests::python_venv("py-chart-venv", "tests/python/requirements-chart.txt")
}

#[test]
fn helm_chart_renders_lints_and_passes_schema_and_security_checks_offline() {
    let py = chart_python();
    let root = workspace_root();
    let script = root.join("tests/chart/validate.py");
    let out = Command::new(&py)
        .arg(&script)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", py.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/chart/validate.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("chart validation ok"),
        "tests/chart/validate.py exited 0 without its closing line:\n{stdout}\n{stderr}"
    );
}

/// Runs mesh-ctl with `args`.
fn mesh_ctl(args: &[&str]) -> std::process::Output {
    Command::new(mesh_tests::mesh_ctl_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running mesh-ctl {args:?}: {e}"))
}

/// Runs mesh-ctl and returns its stdout, failing the test with its stderr if it fails.
fn mesh_ctl_ok(args: &[&str]) -> String {
    let out = mesh_ctl(args);
    assert!(
        out.status.success(),
        "mesh-ctl {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("mesh-ctl prints UTF-8")
}

/// Runs mesh-ctl expecting a usage error (exit 2) whose message contains `needle`.
fn mesh_ctl_refuses(args: &[&str], needle: &str) {
    let out = mesh_ctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "mesh-ctl {args:?} should be refused (exit 2):\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "mesh-ctl {args:?}: the error should name `{needle}`:\n{stderr}"
    );
}

/// A release as the chart renders it and as mesh-ctl is told about it.
struct Release {
    name: &'static str,
    namespace: &'static str,
    /// A values file for the chart (None: its defaults) and the mesh-ctl flags that match it.
    values: Option<&'static str>,
    flags: &'static [&'static str],
    replicas: u32,
}

/// Verifies that `cert` (PEM) chains to `roots` (PEM) and is valid for the DNS name `name`.
fn valid_for(roots: &[u8], cert: &[u8], name: &str) -> bool {
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _};
    let mut store = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(roots) {
        store.add(ca.expect("PEM CA")).expect("a usable CA");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(store),
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .expect("verifier");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .expect("PEM certificate");
    use rustls::client::danger::ServerCertVerifier as _;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_owned()).expect("a DNS name"),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Checks the decoded objects (`contract.py --out`) against the rendered chart's facts
/// (`chart.json`) and the mesh directory.
fn check_objects(release: &Release, dir: &Path, out: &Path) {
    use mesh_node::cluster::layout::{Layout, Member};
    use mesh_node::security::control_key::ControlPublicKey;
    use mesh_node::security::identity::Identity;
    use prost::Message as _;

    let facts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chart.json")).expect("chart.json"))
            .expect("chart.json is JSON");
    let fact = |k: &str| {
        facts[k]
            .as_str()
            .unwrap_or_else(|| panic!("chart.json {k}"))
            .to_owned()
    };
    let (fullname, peers, ns, domain, td) = (
        fact("fullname"),
        fact("peer_service"),
        fact("namespace"),
        fact("cluster_domain"),
        fact("trust_domain"),
    );
    let port = |p: &str| facts["ports"][p].as_u64().expect("chart.json ports");
    let object = |name: &str, key: &str| -> Vec<u8> {
        std::fs::read(out.join("objects").join(name).join(key))
            .unwrap_or_else(|e| panic!("{name}/{key}: {e}"))
    };
    let ca_secret = fact("ca_secret");
    let label = release.name;

    // The CA Secret carries exactly the directory's trust bundle, control key and CRLs.
    let roots = object(&ca_secret, "ca.crt");
    for (key, file) in [
        ("ca.crt", "trust.pem"),
        ("control.pub", "control.pub"),
        ("crl.pem", "crl.pem"),
    ] {
        assert_eq!(
            object(&ca_secret, key),
            std::fs::read(dir.join("ca").join(file)).expect("the file in DIR/ca"),
            "[{label}] {ca_secret}/{key} is DIR/ca/{file}"
        );
    }

    let mut keks = std::collections::BTreeSet::new();
    for i in 0..release.replicas {
        let names = &facts["node_secrets"][i.to_string()];
        let secret = |file: &str| {
            names[file]
                .as_str()
                .expect("chart.json node_secrets")
                .to_owned()
        };
        let (cert, key) = (
            object(&secret("tls.crt"), "tls.crt"),
            object(&secret("tls.key"), "tls.key"),
        );
        let node_id = format!("{fullname}-{i}");
        let chain = mesh_node::security::tls::load_certs(
            &out.join("objects").join(secret("tls.crt")).join("tls.crt"),
        )
        .expect("tls.crt holds PEM certificates");
        assert_eq!(
            Identity::from_certificate(&chain[0]).expect("a mesh identity"),
            Identity::Node {
                trust_domain: td.clone(),
                node_id: node_id.clone()
            },
            "[{label}] ordinal {i}'s certificate names pod {node_id} in the chart's trust domain"
        );
        // The names the README lists: the bare node id (peers and mesh-ctl dial nodes by id), the
        // pod's stable name under the headless Service, the gateway Service, localhost.
        for name in [
            node_id.clone(),
            format!("{node_id}.{peers}.{ns}.svc.{domain}"),
            format!("{fullname}.{ns}.svc"),
            format!("{fullname}.{ns}.svc.{domain}"),
            "localhost".to_owned(),
        ] {
            assert!(
                valid_for(&roots, &cert, &name),
                "[{label}] {node_id}'s certificate chains to the CA Secret's bundle and is valid for {name}"
            );
        }
        let other = format!("{fullname}-{}", i + 1);
        for name in [
            other.clone(),
            format!("{other}.{peers}.{ns}.svc.{domain}"),
            format!("{fullname}.elsewhere.svc"),
        ] {
            assert!(
                !valid_for(&roots, &cert, &name),
                "[{label}] {node_id}'s certificate must not be valid for {name}"
            );
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(
                mesh_node::security::tls::load_key(
                    &out.join("objects").join(secret("tls.key")).join("tls.key"),
                )
                .expect("tls.key is a PEM private key"),
            )
            .expect("a usable key");
        rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .unwrap_or_else(|e| {
                panic!("[{label}] {node_id}'s tls.key belongs to its tls.crt: {e}")
            });
        assert!(!key.is_empty());

        let kek =
            String::from_utf8(object(&secret("node.kek"), "node.kek")).expect("node.kek is text");
        assert!(
            mesh_node::security::crypto::NodeKeys::parse(&kek).is_some(),
            "[{label}] {node_id}'s node.kek is a key file the node reads"
        );
        assert!(keks.insert(kek), "[{label}] every node gets its own key");
    }

    // The layout ConfigMap: DIR's layout, signed by DIR's control key (as the CA Secret carries
    // it), with every pod at the address the chart gives it.
    let bytes = object(&fact("layout_config_map"), "layout.bin");
    assert_eq!(
        bytes,
        std::fs::read(dir.join("layout.bin")).expect("DIR/layout.bin")
    );
    let signed = mesh_proto::v1::SignedLayout::decode(bytes.as_slice()).expect("a SignedLayout");
    let control = ControlPublicKey::parse(
        &String::from_utf8(object(&ca_secret, "control.pub")).expect("control.pub is text"),
    )
    .expect("control.pub");
    let layout = Layout::verify(&signed, &control).expect("the layout verifies with control.pub");
    let want: Vec<Member> = (0..release.replicas)
        .map(|i| {
            let host = format!("{fullname}-{i}.{peers}.{ns}.svc.{domain}");
            Member {
                node_id: format!("{fullname}-{i}"),
                peer_addr: format!("{host}:{}", port("peer")),
                gateway_addr: format!("{host}:{}", port("gateway")),
            }
        })
        .collect();
    assert_eq!(layout.version, 1);
    assert_eq!(
        layout.members, want,
        "[{label}] layout members at the chart's peer names"
    );
}

#[test]
fn mesh_ctl_k8s_manifests_are_what_the_chart_mounts() {
    let py = chart_python();
    let root = workspace_root();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let releases = [
        Release {
            name: "dsm",
            namespace: "shop",
            values: None,
            flags: &[],
            replicas: 3,
        },
        // tests/chart/values-custom.yaml, told to mesh-ctl flag by flag.
        Release {
            name: "orders",
            namespace: "orders",
            values: Some("tests/chart/values-custom.yaml"),
            flags: &[
                "--fullname-override",
                "orders-mesh",
                "--cluster-domain",
                "k8s.example.internal",
                "--ca-secret-name",
                "orders-mesh-trust",
                "--node-secret-prefix",
                "orders-mesh-n",
                "--layout-configmap-name",
                "orders-mesh-layout-v1",
                "--trust-domain",
                "brand.example",
            ],
            replicas: 5,
        },
    ];
    for release in &releases {
        let dir = tmp.path().join(release.name);
        let d = dir.to_str().expect("a UTF-8 path");
        let replicas = release.replicas.to_string();
        let ordinals = format!("0-{}", release.replicas - 1);
        let mut init = vec![
            "k8s",
            "init",
            "--dir",
            d,
            "--release",
            release.name,
            "--namespace",
            release.namespace,
            "--replicas",
            &replicas,
        ];
        init.extend_from_slice(release.flags);
        mesh_ctl_ok(&init);
        let secrets = tmp.path().join(format!("{}-secrets.yaml", release.name));
        std::fs::write(
            &secrets,
            mesh_ctl_ok(&["k8s", "secrets", "--dir", d, "--ordinals", &ordinals]),
        )
        .expect("writing the manifests");
        // KEKs from the release flags for one release, from the directory for the other.
        let mut kek_args = vec!["k8s", "kek", "--ordinals", &ordinals];
        if release.values.is_none() {
            kek_args.extend(["--release", release.name, "--namespace", release.namespace]);
            kek_args.extend_from_slice(release.flags);
        } else {
            kek_args.extend(["--dir", d]);
        }
        let keks = tmp.path().join(format!("{}-kek.yaml", release.name));
        std::fs::write(&keks, mesh_ctl_ok(&kek_args)).expect("writing the manifests");

        let out = tmp.path().join(format!("{}-contract", release.name));
        let mut cmd = Command::new(&py);
        cmd.arg(root.join("tests/chart/contract.py"))
            .current_dir(&root)
            .args(["--release", release.name, "--namespace", release.namespace])
            .arg("--ordinals")
            .arg(
                (0..release.replicas)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--out")
            .arg(&out);
        if let Some(values) = release.values {
            cmd.arg("--values").arg(root.join(values));
        }
        let result = cmd
            .arg(&secrets)
            .arg(&keks)
            .output()
            .expect("running contract.py");
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(
            result.status.success() && stdout.contains("mesh-ctl manifest contract ok"),
            "[{}] tests/chart/contract.py failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
            release.name,
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
        check_objects(release, &dir, &out);
    }
}

#[test]
fn mesh_ctl_k8s_refuses_bad_flags_by_name_and_guards_the_ca_rotation() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("dsm");
    let d = dir.to_str().expect("a UTF-8 path");
    let init = |extra: &[&str]| {
        let mut a = vec!["k8s", "init", "--dir", d];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refuse = |args: Vec<String>, needle: &str| {
        mesh_ctl_refuses(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };
    refuse(
        init(&["--release", "Bad_Name", "--namespace", "shop"]),
        "--release",
    );
    refuse(init(&["--release", "dsm"]), "--namespace is required");
    refuse(
        init(&["--release", "dsm", "--namespace", "Shop"]),
        "--namespace",
    );
    refuse(
        init(&["--release", "dsm", "--namespace", "shop", "--replicas", "0"]),
        "--replicas",
    );
    refuse(
        init(&[
            "--release",
            "dsm",
            "--namespace",
            "shop",
            "--trust-domain",
            "Brand",
        ]),
        "--trust-domain",
    );
    let ok = init(&["--release", "dsm", "--namespace", "shop"]);
    let ok: Vec<&str> = ok.iter().map(String::as_str).collect();
    mesh_ctl_ok(&ok);
    mesh_ctl_ok(&ok); // idempotent
    refuse(
        init(&["--release", "dsm", "--namespace", "prod"]),
        "--namespace",
    );
    mesh_ctl_refuses(
        &["k8s", "secrets", "--dir", d, "--ordinals", "0..3"],
        "--ordinals",
    );
    mesh_ctl_refuses(
        &["k8s", "secrets", "--dir", d, "--ordinals", "999"],
        "--ordinals",
    );
    mesh_ctl_refuses(
        &["k8s", "secrets", "--dir", d, "--release", "other"],
        "--release other",
    );
    mesh_ctl_refuses(
        &["k8s", "secrets", "--dir", d, "--dns", "not a name"],
        "--dns",
    );
    mesh_ctl_refuses(&["k8s", "kek", "--ordinals", "0"], "--release is required");
    let plain = tmp.path().join("plain");
    mesh_ctl_ok(&[
        "ca",
        "init",
        "--dir",
        plain.join("ca").to_str().expect("a UTF-8 path"),
    ]);
    mesh_ctl_refuses(
        &[
            "k8s",
            "secrets",
            "--dir",
            plain.to_str().expect("a UTF-8 path"),
        ],
        "mesh-ctl k8s init",
    );
    // `cert rotate` renews the files of a local mesh; on Kubernetes it points at the Secrets.
    mesh_ctl_refuses(&["cert", "rotate", "--dir", d], "Kubernetes");

    // CA rotation: both CAs in the bundle, and no finish while a node's newest certificate is
    // from the old CA.
    let trust = || {
        mesh_node::security::tls::load_certs(&dir.join("ca/trust.pem"))
            .expect("writing the manifests")
    };
    let first_ca = trust();
    mesh_ctl_ok(&["k8s", "secrets", "--dir", d, "--ordinals", "0-2"]);
    mesh_ctl_ok(&["k8s", "ca-rotate", "--dir", d]);
    assert_eq!(
        trust().len(),
        2,
        "old and new CA trusted during the rotation"
    );
    mesh_ctl_refuses(&["k8s", "ca-rotate", "--dir", d], "already under way");
    mesh_ctl_refuses(
        &[
            "k8s",
            "ca-rotate",
            "--finish",
            "--skip-node-check",
            "--dir",
            d,
        ],
        "node dsm-mesh-2: its newest certificate is from the old CA",
    );
    mesh_ctl_ok(&["k8s", "secrets", "--dir", d, "--ordinals", "0-1"]);
    mesh_ctl_refuses(
        &[
            "k8s",
            "ca-rotate",
            "--finish",
            "--skip-node-check",
            "--dir",
            d,
        ],
        "node dsm-mesh-2",
    );
    mesh_ctl_ok(&["k8s", "secrets", "--dir", d, "--ordinals", "2"]);
    mesh_ctl_ok(&[
        "k8s",
        "ca-rotate",
        "--finish",
        "--skip-node-check",
        "--dir",
        d,
    ]);
    let after = trust();
    assert_eq!(after.len(), 1, "only the new CA after --finish");
    assert_ne!(after[0], first_ca[0], "the new CA, not the old one");
    assert!(!dir.join("ca/previous").exists(), "the old CA key is gone");
}
