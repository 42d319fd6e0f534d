//! The names a Helm release of `charts/mesh` gives everything, computed exactly as the chart does
//! (`templates/_helpers.tpl`), so the manifests mesh-ctl prints are the ones the chart mounts.
//! Pure: no I/O besides reading and writing `DIR/k8s.json`, which records the release a mesh
//! directory belongs to.

use anyhow::{Context as _, bail};
use mesh_node::cluster::layout::Member;
use std::collections::BTreeSet;
use std::path::Path;

/// The chart's name (`Chart.yaml`), the default of `nameOverride`.
pub const CHART_NAME: &str = "mesh";
/// `mesh.fullname` truncates to 52 characters: pod names carry a 10-character revision hash
/// label and `<fullname>-peers` must stay a DNS label.
const FULLNAME_MAX: usize = 52;
/// The chart's `maxNodes` may not exceed this (values.schema.json), so no ordinal reaches it.
pub const MAX_ORDINALS: u32 = 256;
/// The file in a mesh directory that records its release.
pub const RELEASE_FILE: &str = "k8s.json";
/// Format version of `k8s.json`.
const FORMAT: u32 = 1;

/// A release of the chart: what `DIR/k8s.json` holds. Everything mesh-ctl names for Kubernetes
/// derives from it, so the CA Secret, node certificates and layout of one directory always agree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// Format version of this file.
    pub format: u32,
    /// The Helm release name (`helm install <release>`): the `app.kubernetes.io/instance` label.
    pub release: String,
    /// Part of every node's DNS name, so certificates and layouts are only valid in it.
    pub namespace: String,
    /// `mesh.fullname`: the StatefulSet, and the prefix of every pod (node id) and object.
    pub fullname: String,
    /// The chart's `clusterDomain`, the suffix of the peer names in layouts and certificates.
    pub cluster_domain: String,
    /// The chart's `ports.gateway` and `ports.peer`, in layout member addresses.
    pub gateway_port: u16,
    pub peer_port: u16,
    /// The chart's `secrets.caSecretName`, `secrets.nodeSecretPrefix` and `layout.configMapName`,
    /// with their defaults applied.
    pub ca_secret: String,
    pub node_secret_prefix: String,
    pub layout_config_map: String,
}

/// What the operator says about the release (the chart values that shape names).
#[derive(Debug, Clone, Default)]
pub struct ReleaseSpec {
    pub release: String,
    pub namespace: String,
    pub name_override: Option<String>,
    pub fullname_override: Option<String>,
    pub cluster_domain: String,
    pub gateway_port: u16,
    pub peer_port: u16,
    pub ca_secret_name: Option<String>,
    pub node_secret_prefix: Option<String>,
    pub layout_config_map_name: Option<String>,
}

/// Sprig's `trunc n | trimSuffix "-"`: at most `n` bytes, then one trailing `-` removed.
fn trunc_trim(s: &str, n: usize) -> String {
    let cut = if s.len() > n { &s[..n] } else { s };
    cut.strip_suffix('-').unwrap_or(cut).to_owned()
}

/// `mesh.fullname`: `fullnameOverride`; else the release name if it contains the chart name
/// (or `nameOverride`); else `<release>-<name>`; truncated to 52 characters.
pub fn fullname(
    release: &str,
    name_override: Option<&str>,
    fullname_override: Option<&str>,
) -> String {
    if let Some(f) = fullname_override.filter(|f| !f.is_empty()) {
        return trunc_trim(f, FULLNAME_MAX);
    }
    let name = name_override
        .filter(|n| !n.is_empty())
        .unwrap_or(CHART_NAME);
    if release.contains(name) {
        trunc_trim(release, FULLNAME_MAX)
    } else {
        trunc_trim(&format!("{release}-{name}"), FULLNAME_MAX)
    }
}

/// A DNS label: 1-63 lowercase letters, digits and `-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A DNS subdomain (Kubernetes object names): dot-separated DNS labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl ReleaseSpec {
    /// The release's names, checked as the chart checks them; each error names the flag to fix.
    pub fn resolve(&self) -> anyhow::Result<Release> {
        // Helm's own rule for release names (a DNS subdomain of at most 53 characters).
        if !is_dns_subdomain(&self.release) || self.release.len() > 53 {
            bail!(
                "--release `{}`: a Helm release name is 1-53 lowercase letters, digits, `-` and `.`, \
                 starting and ending with a letter or digit",
                self.release
            );
        }
        if !is_dns_label(&self.namespace) {
            bail!(
                "--namespace `{}`: a namespace is a DNS label (1-63 lowercase letters, digits and `-`)",
                self.namespace
            );
        }
        if let Some(n) = self.name_override.as_deref().filter(|n| !n.is_empty())
            && (!is_dns_label(n) || n.len() > FULLNAME_MAX)
        {
            bail!(
                "--name-override `{n}`: use a DNS label of at most 52 characters (the chart's nameOverride)"
            );
        }
        if let Some(f) = self.fullname_override.as_deref().filter(|f| !f.is_empty())
            && (!is_dns_label(f) || f.len() > FULLNAME_MAX)
        {
            bail!(
                "--fullname-override `{f}`: use a DNS label of at most 52 characters (the chart's fullnameOverride)"
            );
        }
        let fullname = fullname(
            &self.release,
            self.name_override.as_deref(),
            self.fullname_override.as_deref(),
        );
        if !is_dns_label(&fullname) {
            // The chart refuses to render such a release (mesh.validateValues).
            bail!(
                "--release `{}` makes the chart's fullname `{fullname}`, which is not a DNS label (pod \
                 names are node ids and peer DNS names); pass --fullname-override (and set the chart's \
                 fullnameOverride to the same)",
                self.release
            );
        }
        if !is_dns_subdomain(&self.cluster_domain) {
            bail!(
                "--cluster-domain `{}`: use the cluster's DNS domain, e.g. cluster.local",
                self.cluster_domain
            );
        }
        if self.gateway_port == 0 || self.peer_port == 0 {
            bail!(
                "--gateway-port and --peer-port must be 1-65535 (the chart's ports.gateway and ports.peer)"
            );
        }
        let ca_secret = match self.ca_secret_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) if !is_dns_subdomain(n) => bail!(
                "--ca-secret-name `{n}`: a Secret name is a DNS subdomain (lowercase letters, digits, `-`, `.`)"
            ),
            Some(n) => n.to_owned(),
            None => format!("{fullname}-ca"),
        };
        let node_secret_prefix = match self.node_secret_prefix.as_deref().filter(|n| !n.is_empty())
        {
            // The chart's schema: starts alphanumeric; "<prefix>N-tls" must then be a valid name.
            Some(p) if !is_dns_subdomain(&format!("{p}0-tls")) || p.len() > 240 => bail!(
                "--node-secret-prefix `{p}`: `<prefix>N-tls` must be a Secret name (lowercase letters, \
                 digits, `-`, `.`; starting with a letter or digit)"
            ),
            Some(p) => p.to_owned(),
            None => format!("{fullname}-node-"),
        };
        let layout_config_map = match self
            .layout_config_map_name
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            Some(n) if !is_dns_subdomain(n) => bail!(
                "--layout-configmap-name `{n}`: a ConfigMap name is a DNS subdomain (lowercase letters, digits, `-`, `.`)"
            ),
            Some(n) => n.to_owned(),
            None => format!("{fullname}-layout"),
        };
        let release = Release {
            format: FORMAT,
            release: self.release.clone(),
            namespace: self.namespace.clone(),
            fullname,
            cluster_domain: self.cluster_domain.clone(),
            gateway_port: self.gateway_port,
            peer_port: self.peer_port,
            ca_secret,
            node_secret_prefix,
            layout_config_map,
        };
        let longest = release.peer_dns(MAX_ORDINALS - 1);
        if longest.len() > 253 {
            bail!(
                "--cluster-domain `{}`: the peer names ({longest}) would exceed 253 characters",
                self.cluster_domain
            );
        }
        Ok(release)
    }
}

impl Release {
    /// Node id of pod `ordinal`: the pod's name, `<fullname>-N`.
    pub fn node_id(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.fullname)
    }

    /// The headless Service that gives every pod a stable DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peers", self.fullname)
    }

    /// `<fullname>-N.<fullname>-peers.<namespace>.svc.<clusterDomain>`: pod N's stable name.
    pub fn peer_dns(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc.{}",
            self.node_id(ordinal),
            self.peer_service(),
            self.namespace,
            self.cluster_domain
        )
    }

    /// The gateway Service's names, short and fully qualified.
    pub fn gateway_service_names(&self) -> [String; 2] {
        let short = format!("{}.{}.svc", self.fullname, self.namespace);
        let long = format!("{short}.{}", self.cluster_domain);
        [short, long]
    }

    /// The DNS names of node N's certificate, as the chart README lists them. The bare node id
    /// comes first: peers (QUIC) and mesh-ctl's admin calls verify a node by its id.
    pub fn node_dns_names(&self, ordinal: u32, extra: &[String]) -> Vec<String> {
        let [short, long] = self.gateway_service_names();
        let mut names = vec![self.node_id(ordinal), self.peer_dns(ordinal), short, long];
        names.push("localhost".to_owned());
        for e in extra {
            if !names.contains(e) {
                names.push(e.clone());
            }
        }
        names
    }

    /// Pod N as a layout member.
    pub fn member(&self, ordinal: u32) -> Member {
        let host = self.peer_dns(ordinal);
        Member {
            node_id: self.node_id(ordinal),
            gateway_addr: format!("{host}:{}", self.gateway_port),
            peer_addr: format!("{host}:{}", self.peer_port),
        }
    }

    /// The ordinal of a node id of this release (`<fullname>-N`), if it is one.
    pub fn ordinal_of(&self, node_id: &str) -> Option<u32> {
        let n = node_id.strip_prefix(&self.fullname)?.strip_prefix('-')?;
        if n.len() > 1 && n.starts_with('0') {
            return None;
        }
        n.parse().ok()
    }

    pub fn tls_secret(&self, ordinal: u32) -> String {
        format!("{}{ordinal}-tls", self.node_secret_prefix)
    }

    pub fn kek_secret(&self, ordinal: u32) -> String {
        format!("{}{ordinal}-kek", self.node_secret_prefix)
    }

    /// Reads `DIR/k8s.json`; `None` if the directory has none.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Release>> {
        let path = dir.join(RELEASE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.with_context(|| format!("reading {}", path.display()))?,
        };
        let release: Release =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        if release.format != FORMAT {
            bail!(
                "{} has format {}; this mesh-ctl reads format {FORMAT} (use a matching mesh-ctl)",
                path.display(),
                release.format
            );
        }
        Ok(Some(release))
    }

    /// Reads `DIR/k8s.json`, or says how to create it.
    pub fn require(dir: &Path) -> anyhow::Result<Release> {
        Release::load(dir)?.with_context(|| {
            format!(
                "{} is not set up for Kubernetes (no {RELEASE_FILE}); run `mesh-ctl k8s init --dir {} \
                 --release <release> --namespace <namespace>` first",
                dir.display(),
                dir.display()
            )
        })
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        crate::control::write_atomic(
            &dir.join(RELEASE_FILE),
            format!("{}\n", serde_json::to_string_pretty(self)?).as_bytes(),
        )
    }

    /// The first field in which `other` differs, for errors that say exactly what disagrees.
    pub fn difference(&self, other: &Release) -> Option<(&'static str, String, String)> {
        let fields: [(&str, String, String); 9] = [
            ("--release", self.release.clone(), other.release.clone()),
            (
                "--namespace",
                self.namespace.clone(),
                other.namespace.clone(),
            ),
            (
                "the fullname",
                self.fullname.clone(),
                other.fullname.clone(),
            ),
            (
                "--cluster-domain",
                self.cluster_domain.clone(),
                other.cluster_domain.clone(),
            ),
            (
                "--gateway-port",
                self.gateway_port.to_string(),
                other.gateway_port.to_string(),
            ),
            (
                "--peer-port",
                self.peer_port.to_string(),
                other.peer_port.to_string(),
            ),
            (
                "--ca-secret-name",
                self.ca_secret.clone(),
                other.ca_secret.clone(),
            ),
            (
                "--node-secret-prefix",
                self.node_secret_prefix.clone(),
                other.node_secret_prefix.clone(),
            ),
            (
                "--layout-configmap-name",
                self.layout_config_map.clone(),
                other.layout_config_map.clone(),
            ),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

/// Parses `--ordinals`: inclusive ranges and single ordinals, comma-separated (`0-2`, `3,5`,
/// `0-2,7`), as in the README ("nodes 0..2" are three nodes). `a..b` is refused rather than
/// guessed: half-open or inclusive, one reading would leave a pod without its certificate.
pub fn parse_ordinals(s: &str) -> anyhow::Result<BTreeSet<u32>> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--ordinals `{s}`: {why}; write pod ordinals as a list and inclusive ranges, e.g. `0-2` \
             (pods 0, 1 and 2) or `0-2,5`"
        )
    };
    if s.contains("..") {
        return Err(bad("`..` is ambiguous (is the end included?)"));
    }
    let number = |t: &str| -> anyhow::Result<u32> {
        let n: u32 = t
            .trim()
            .parse()
            .map_err(|_| bad(&format!("`{}` is not a number", t.trim())))?;
        if n >= MAX_ORDINALS {
            return Err(bad(&format!(
                "{n} is beyond the chart's largest maxNodes ({MAX_ORDINALS}; ordinals are below maxNodes)"
            )));
        }
        Ok(n)
    };
    let mut out = BTreeSet::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(bad("an empty item"));
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(bad(&format!("the range {a}-{b} runs backwards")));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(number(part)?);
            }
        }
    }
    Ok(out)
}

/// The shortest `--ordinals` argument for `ordinals` (`0-2,5`).
pub fn ordinals_arg(ordinals: &BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for &n in ordinals {
        run = match run {
            Some((a, b)) if n == b + 1 => Some((a, n)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    fn spec(release: &str) -> ReleaseSpec {
        ReleaseSpec {
            release: release.into(),
            namespace: "shop".into(),
            cluster_domain: "cluster.local".into(),
            gateway_port: 7443,
            peer_port: 7444,
            ..ReleaseSpec::default()
        }
    }

    /// `mesh.fullname`, case by case, as Helm renders it.
    #[test]
    fn fullname_follows_the_chart_helper() {
        assert_eq!(fullname("dsm", None, None), "dsm-mesh");
        assert_eq!(fullname("dsm-mesh", None, None), "dsm-mesh");
        assert_eq!(
            fullname("meshy", None, None),
            "meshy",
            "contains, not equals"
        );
        assert_eq!(fullname("orders", None, Some("orders-mesh")), "orders-mesh");
        assert_eq!(fullname("dsm", Some("shard"), None), "dsm-shard");
        assert_eq!(fullname("dsm-shard", Some("shard"), None), "dsm-shard");
        assert_eq!(
            fullname("dsm", Some(""), Some("")),
            "dsm-mesh",
            "empty overrides are unset"
        );
        // trunc 52, then one trailing '-' removed.
        let long = "a".repeat(47);
        assert_eq!(fullname(&long, None, None), format!("{long}-mesh"));
        let long = "a".repeat(48);
        assert_eq!(fullname(&long, None, None), format!("{long}-mes"));
        let long = "a".repeat(51);
        assert_eq!(
            fullname(&long, None, None),
            long,
            "`<51 a>-` loses its dash"
        );
        assert_eq!(fullname("x", None, Some(&"b".repeat(60))), "b".repeat(52));
    }

    #[test]
    fn names_follow_the_chart_readme() {
        let r = spec("dsm").resolve().unwrap();
        assert_eq!(r.fullname, "dsm-mesh");
        assert_eq!(r.ca_secret, "dsm-mesh-ca");
        assert_eq!(r.tls_secret(3), "dsm-mesh-node-3-tls");
        assert_eq!(r.kek_secret(3), "dsm-mesh-node-3-kek");
        assert_eq!(r.layout_config_map, "dsm-mesh-layout");
        assert_eq!(
            r.peer_dns(3),
            "dsm-mesh-3.dsm-mesh-peers.shop.svc.cluster.local"
        );
        let m = r.member(3);
        assert_eq!(m.node_id, "dsm-mesh-3");
        assert_eq!(
            m.peer_addr,
            "dsm-mesh-3.dsm-mesh-peers.shop.svc.cluster.local:7444"
        );
        assert_eq!(
            m.gateway_addr,
            "dsm-mesh-3.dsm-mesh-peers.shop.svc.cluster.local:7443"
        );
        assert_eq!(
            r.node_dns_names(3, &["mesh.brand.example".into(), "localhost".into()]),
            [
                "dsm-mesh-3",
                "dsm-mesh-3.dsm-mesh-peers.shop.svc.cluster.local",
                "dsm-mesh.shop.svc",
                "dsm-mesh.shop.svc.cluster.local",
                "localhost",
                "mesh.brand.example",
            ]
        );
        assert_eq!(r.ordinal_of("dsm-mesh-12"), Some(12));
        assert_eq!(r.ordinal_of("dsm-mesh-012"), None);
        assert_eq!(r.ordinal_of("other-1"), None);
    }

    #[test]
    fn overrides_name_the_objects() {
        let mut s = spec("orders");
        s.fullname_override = Some("orders-mesh".into());
        s.ca_secret_name = Some("orders-mesh-trust".into());
        s.node_secret_prefix = Some("orders-mesh-n".into());
        s.layout_config_map_name = Some("orders-mesh-layout-v1".into());
        let r = s.resolve().unwrap();
        assert_eq!(r.ca_secret, "orders-mesh-trust");
        assert_eq!(r.tls_secret(0), "orders-mesh-n0-tls");
        assert_eq!(r.layout_config_map, "orders-mesh-layout-v1");
    }

    #[test]
    fn bad_input_names_its_flag() {
        let err = |s: ReleaseSpec| s.resolve().unwrap_err().to_string();
        assert!(err(spec("Bad_Name")).contains("--release"));
        assert!(
            err(spec("dsm.v2")).contains("--fullname-override"),
            "dots make no DNS label"
        );
        let mut s = spec("dsm");
        s.namespace = "Shop".into();
        assert!(err(s).contains("--namespace"));
        let mut s = spec("dsm");
        s.fullname_override = Some("a.b".into());
        assert!(err(s).contains("--fullname-override"));
        let mut s = spec("dsm");
        s.cluster_domain = "cluster..local".into();
        assert!(err(s).contains("--cluster-domain"));
        let mut s = spec("dsm");
        s.node_secret_prefix = Some("-x".into());
        assert!(err(s).contains("--node-secret-prefix"));
    }

    #[test]
    fn ordinals_are_lists_and_inclusive_ranges() {
        let v = |s: &str| parse_ordinals(s).unwrap().into_iter().collect::<Vec<_>>();
        assert_eq!(v("0-2"), [0, 1, 2]);
        assert_eq!(v("3"), [3]);
        assert_eq!(v("0-1, 5,4"), [0, 1, 4, 5]);
        assert_eq!(v("255"), [255]);
        for s in ["0-2", "0-2,5", "3", "0,2,4-6"] {
            assert_eq!(ordinals_arg(&parse_ordinals(s).unwrap()), s, "round trip");
        }
        for bad in ["0..3", "", "1,,2", "2-1", "a", "256", "-1", "0-"] {
            let e = parse_ordinals(bad).unwrap_err().to_string();
            assert!(e.starts_with("--ordinals"), "{bad}: {e}");
        }
    }
}
