//! Unit tests of `config`.

use super::collect::Collect;
use super::file::{FileAccess, FileTelemetry};
use super::sections::{access_rules, telemetry_settings};

/// An environment of `DSM_*` overrides.
fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A fresh collection of values and problems over `env`.
fn collect(env: &HashMap<String, String>) -> Collect<'_> {
    Collect {
        env,
        errors: Vec::new(),
    }
}
use super::*;

#[test]
fn reports_every_problem_at_once() {
    let env = env_of(&[
        ("DSM_NODE_ID", "Bad Id"),
        ("DSM_GATEWAY_LISTEN", "nowhere"),
        ("DSM_REQUEST_TIMEOUT", "forever"),
        ("DSM_LOG_FORMAT", "xml"),
    ]);
    let errs = Config::load(None, &env).expect_err("invalid").0;
    for needle in [
        "node_id",
        "trust_domain",
        "data_dir",
        "key_file",
        "gateway_listen",
        "tls.ca",
        "tls.cert",
        "tls.key",
        "request_timeout",
        "log.format",
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(needle) || e.contains(needle)),
            "{needle} missing from {errs:#?}"
        );
    }
}

#[test]
fn access_settings_are_checked_and_named() {
    let env = env_of(&[
        ("DSM_ACCESS_CONTACT_GRACE", "soon"),
        ("DSM_ACCESS_REVEAL_LIMIT", "0"),
        ("DSM_ACCESS_REQUIRE_PURPOSE", "support, wizard"),
    ]);
    let mut c = collect(&env);
    let rules = access_rules(&mut c, FileAccess::default());
    assert_eq!(
        rules.require_purpose,
        vec![crate::access::policy::Role::Support]
    );
    for needle in [
        "access.contact_grace",
        "access.reveal_limit",
        "access.require_purpose: unknown role `wizard`",
    ] {
        assert!(
            c.errors.iter().any(|e| e.starts_with(needle)),
            "{needle} missing from {:#?}",
            c.errors
        );
    }
    let env = env_of(&[
        ("DSM_ACCESS_CONTACT_GRACE", "2s"),
        ("DSM_ACCESS_REQUIRE_PURPOSE", ""),
    ]);
    let mut c = collect(&env);
    let rules = access_rules(&mut c, FileAccess::default());
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(rules.contact_grace, Duration::from_secs(2));
    assert!(rules.require_purpose.is_empty());
}

#[test]
fn telemetry_settings_are_checked_and_named() {
    let settings = |pairs: &[(&str, &str)]| {
        let env = env_of(pairs);
        let mut c = collect(&env);
        let t = telemetry_settings(&mut c, FileTelemetry::default());
        (t, c.errors)
    };
    let (t, errors) = settings(&[]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(t, crate::telemetry::trace::TelemetryConfig::default());
    assert_eq!(t.otlp_endpoint, None);

    let (t, errors) = settings(&[
        ("DSM_OTLP_ENDPOINT", "http://otel-agent.monitoring:4317"),
        ("DSM_TELEMETRY_SERVICE_NAME", "dsm-prod"),
        ("DSM_TELEMETRY_SAMPLE_RATIO", "0.25"),
    ]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        t.otlp_endpoint.as_deref(),
        Some("http://otel-agent.monitoring:4317")
    );
    assert_eq!(t.service_name, "dsm-prod");
    assert!((t.sample_ratio - 0.25).abs() < f64::EPSILON);

    for (key, env, value) in [
        (
            "telemetry.otlp_endpoint",
            "DSM_OTLP_ENDPOINT",
            "127.0.0.1:4317",
        ),
        (
            "telemetry.otlp_endpoint",
            "DSM_OTLP_ENDPOINT",
            "https://collector:4317",
        ),
        (
            "telemetry.otlp_endpoint",
            "DSM_OTLP_ENDPOINT",
            "http://collector:4317/v1/traces",
        ),
        (
            "telemetry.service_name",
            "DSM_TELEMETRY_SERVICE_NAME",
            "mesh node",
        ),
        (
            "telemetry.sample_ratio",
            "DSM_TELEMETRY_SAMPLE_RATIO",
            "1.5",
        ),
        (
            "telemetry.sample_ratio",
            "DSM_TELEMETRY_SAMPLE_RATIO",
            "all",
        ),
    ] {
        let (t, errors) = settings(&[(env, value)]);
        assert!(
            errors.len() == 1 && errors[0].starts_with(key),
            "{value}: {errors:?}"
        );
        assert_eq!(t, crate::telemetry::trace::TelemetryConfig::default());
    }
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "node_idd = \"n1\"\n").expect("write");
    let errs = Config::load(Some(&path), &HashMap::new())
        .expect_err("typo")
        .0;
    assert!(errs[0].contains("node_idd"), "{errs:?}");
}
