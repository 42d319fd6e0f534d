//! The `config` target: `Config::load` on `node.toml`, the `DSM_*` overrides and the files they
//! name.

use super::{Mutation, TD, apply, at, bytes_from, fuzz, mutations, node};
use crate::cluster::layout::{Layout, Member};
use crate::security::control_key::ControlKey;
use crate::security::crypto::generate_key_file;
use crate::security::pki::{CertificateAuthority, LeafSpec};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

struct ConfigFixture {
    dir: tempfile::TempDir,
    /// Valid `node.toml` texts.
    tomls: Vec<Vec<u8>>,
    /// Files the configuration names: (environment override, valid contents).
    side: Vec<(&'static str, Vec<u8>)>,
}

fn config_fixture() -> ConfigFixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = CertificateAuthority::create(TD, Duration::from_secs(3600)).unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    ca.issue(&LeafSpec::new(node("n1"), Duration::from_secs(3600)))
        .unwrap()
        .write(d, "n1")
        .unwrap();
    std::fs::write(d.join("node.kek"), generate_key_file()).unwrap();
    let (control, _) = ControlKey::generate();
    std::fs::write(d.join("control.pub"), control.public().to_text()).unwrap();
    let layout = Layout::initial(vec![Member {
        node_id: "n1".into(),
        peer_addr: "127.0.0.1:7444".into(),
        gateway_addr: "127.0.0.1:7443".into(),
    }])
    .unwrap();
    std::fs::write(d.join("layout.bin"), layout.sign(&control).encode_to_vec()).unwrap();
    std::fs::write(d.join("crl.pem"), ca.crl_pem(1, &[]).unwrap()).unwrap();
    let p = |name: &str| d.join(name).display().to_string();
    let full = format!(
        r#"node_id = "n1"
trust_domain = "{TD}"
data_dir = "{data}"
key_file = "{kek}"
gateway_listen = "127.0.0.1:7443"
ops_listen = "127.0.0.1:9090"
peer_listen = "127.0.0.1:7444"
control_public_key = "{control}"
layout_file = "{layout}"
[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
reload_interval = "2s"
[limits]
max_concurrent_requests = 512
request_timeout = "10s"
handshake_timeout = "5s"
drain_timeout = "10s"
[log]
format = "json"
level = "info,mesh_node=debug"
[audit]
retention = "1095d"
segment_bytes = 67108864
[access]
contact_grace = "72h"
reveal_limit = 20
reveal_window = "1h"
require_purpose = ["comms", "support"]
[rebalance]
rate = "32MiB"
[telemetry]
otlp_endpoint = "http://127.0.0.1:4317"
service_name = "mesh-node"
sample_ratio = 1.0
"#,
        data = p("data"),
        kek = p("node.kek"),
        control = p("control.pub"),
        layout = p("layout.bin"),
        ca = p("ca.pem"),
        cert = p("n1.pem"),
        key = p("n1.key"),
        crl = p("crl.pem"),
    );
    let minimal = format!(
        "node_id = \"n1\"\ntrust_domain = \"{TD}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        p("data"),
        p("node.kek"),
        p("ca.pem"),
        p("n1.pem"),
        p("n1.key"),
    );
    let side = [
        ("DSM_KEY_FILE", "node.kek"),
        ("DSM_CONTROL_PUBLIC_KEY", "control.pub"),
        ("DSM_LAYOUT_FILE", "layout.bin"),
        ("DSM_TLS_CA", "ca.pem"),
        ("DSM_TLS_CERT", "n1.pem"),
        ("DSM_TLS_KEY", "n1.key"),
    ]
    .into_iter()
    .map(|(env, name)| (env, std::fs::read(d.join(name)).unwrap()))
    .collect();
    ConfigFixture {
        dir,
        tomls: vec![full.into_bytes(), minimal.into_bytes()],
        side,
    }
}

/// Every `DSM_*` override `Config::load` reads.
const CONFIG_ENV: &[&str] = &[
    "DSM_NODE_ID",
    "DSM_TRUST_DOMAIN",
    "DSM_DATA_DIR",
    "DSM_GATEWAY_LISTEN",
    "DSM_OPS_LISTEN",
    "DSM_PEER_LISTEN",
    "DSM_TLS_CRL",
    "DSM_TLS_RELOAD_INTERVAL",
    "DSM_MAX_CONCURRENT_REQUESTS",
    "DSM_REQUEST_TIMEOUT",
    "DSM_HANDSHAKE_TIMEOUT",
    "DSM_DRAIN_TIMEOUT",
    "DSM_LOG_FORMAT",
    "DSM_LOG_LEVEL",
    "DSM_AUDIT_RETENTION",
    "DSM_AUDIT_SEGMENT_BYTES",
    "DSM_ACCESS_CONTACT_GRACE",
    "DSM_ACCESS_REVEAL_LIMIT",
    "DSM_ACCESS_REVEAL_WINDOW",
    "DSM_ACCESS_REQUIRE_PURPOSE",
    "DSM_REBALANCE_RATE",
    "DSM_OTLP_ENDPOINT",
    "DSM_TELEMETRY_SERVICE_NAME",
    "DSM_TELEMETRY_SAMPLE_RATIO",
];

#[derive(Debug, Clone)]
struct ConfigCase {
    toml: Vec<u8>,
    /// One of the files it names, replaced by mutated contents (through its override).
    side: Option<(usize, Vec<Mutation>)>,
    env: Vec<(usize, Vec<u8>)>,
}

fn config_case(tomls: Vec<Vec<u8>>) -> impl Strategy<Value = ConfigCase> {
    let values = bytes_from(vec![
        b"10s".to_vec(),
        b"1h".to_vec(),
        b"127.0.0.1:7443".to_vec(),
        b"json".to_vec(),
        b"info,mesh_node[span{field=\"x\"}]=debug".to_vec(),
        b"32MiB".to_vec(),
        b"0.5".to_vec(),
        b"comms, support".to_vec(),
        b"http://127.0.0.1:4317".to_vec(),
        b"100000".to_vec(),
    ]);
    (
        bytes_from(tomls),
        prop_oneof![3 => Just(None), 1 => (any::<usize>(), mutations()).prop_map(Some)],
        prop_oneof![2 => Just(Vec::new()), 1 => vec((any::<usize>(), values), 1..3)],
    )
        .prop_map(|(toml, side, env)| ConfigCase { toml, side, env })
}

fn load_config_case(
    f: &ConfigFixture,
    case: &ConfigCase,
) -> Result<crate::ops::config::Config, crate::ops::config::ConfigErrors> {
    let file: PathBuf = f.dir.path().join("node.toml");
    std::fs::write(&file, &case.toml).unwrap();
    let mut env: HashMap<String, String> = HashMap::new();
    if let Some((i, ms)) = &case.side {
        let pool: Vec<Vec<u8>> = f.side.iter().map(|(_, b)| b.clone()).collect();
        let (key, valid) = &f.side[at(i, f.side.len())];
        let path = f.dir.path().join("mutated");
        std::fs::write(&path, apply(&pool, valid.clone(), ms)).unwrap();
        env.insert((*key).to_owned(), path.display().to_string());
    }
    for (i, value) in &case.env {
        env.insert(
            CONFIG_ENV[at(i, CONFIG_ENV.len())].to_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    crate::ops::config::Config::load(Some(&file), &env)
}

#[test]
fn fuzz_config_never_panics() {
    let f = config_fixture();
    for toml in &f.tomls {
        let case = ConfigCase {
            toml: toml.clone(),
            side: None,
            env: Vec::new(),
        };
        assert!(load_config_case(&f, &case).is_ok(), "the seed loads");
    }
    fuzz("config", config_case(f.tomls.clone()), |case| {
        let _ = load_config_case(&f, &case);
        Ok(())
    });
}
