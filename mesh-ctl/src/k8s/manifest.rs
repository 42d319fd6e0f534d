//! Kubernetes Secret and ConfigMap manifests as `kubectl apply -f -` and `kubectl create -f -`
//! read them: multi-document YAML (or a `v1` `List` in JSON), keys in the conventional order,
//! every scalar double-quoted so no name or value can be read as a number or a boolean. Pure.

use base64::Engine as _;
use std::collections::BTreeMap;

use super::release::Release;

/// A YAML/JSON node: a string, or a map that keeps its keys in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Str(String),
    Map(Vec<(String, Node)>),
}

impl Node {
    pub fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Node)>) -> Node {
        Node::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Str(s) => serde_json::Value::String(s.clone()),
            Node::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// The value at `path` of nested maps, if there is one.
    #[cfg(test)]
    pub fn get(&self, path: &[&str]) -> Option<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return Some(self);
        };
        match self {
            Node::Map(m) => m.iter().find(|(k, _)| k == first)?.1.get(rest),
            Node::Str(_) => None,
        }
    }
}

/// One manifest and the comment printed above it (what it is, never secret material).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub comment: String,
    pub object: Node,
}

/// What an object is for, in `app.kubernetes.io/component`.
#[derive(Debug, Clone, Copy)]
pub enum Component {
    Ca,
    NodeTls,
    NodeKek,
    Layout,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Ca => "ca",
            Component::NodeTls => "node-tls",
            Component::NodeKek => "node-kek",
            Component::Layout => "layout",
        }
    }
}

/// Labels that find the objects (`kubectl get secret -l app.kubernetes.io/instance=<release>`).
/// Never `managed-by: Helm`: Helm would take them for its own and delete them on uninstall.
fn metadata(release: &Release, name: &str, component: Component) -> Node {
    Node::map([
        ("name", Node::str(name)),
        ("namespace", Node::str(&release.namespace)),
        (
            "labels",
            Node::map([
                ("app.kubernetes.io/instance", Node::str(&release.release)),
                ("app.kubernetes.io/part-of", Node::str("dark-store-mesh")),
                ("app.kubernetes.io/managed-by", Node::str("mesh-ctl")),
                ("app.kubernetes.io/component", Node::str(component.as_str())),
            ]),
        ),
    ])
}

fn base64_map(data: &BTreeMap<&str, Vec<u8>>) -> Node {
    let b64 = base64::engine::general_purpose::STANDARD;
    Node::map(data.iter().map(|(k, v)| (*k, Node::str(b64.encode(v)))))
}

/// A Secret of `type_` holding `data` (base64-encoded here, as the API wants it).
pub fn secret(
    release: &Release,
    name: &str,
    component: Component,
    type_: &str,
    data: &BTreeMap<&str, Vec<u8>>,
) -> Node {
    Node::map([
        ("apiVersion", Node::str("v1")),
        ("kind", Node::str("Secret")),
        ("metadata", metadata(release, name, component)),
        ("type", Node::str(type_)),
        ("data", base64_map(data)),
    ])
}

/// A ConfigMap holding binary files (`binaryData`, base64).
pub fn binary_config_map(
    release: &Release,
    name: &str,
    component: Component,
    data: &BTreeMap<&str, Vec<u8>>,
) -> Node {
    Node::map([
        ("apiVersion", Node::str("v1")),
        ("kind", Node::str("ConfigMap")),
        ("metadata", metadata(release, name, component)),
        ("binaryData", base64_map(data)),
    ])
}

/// Whether YAML (1.1 as well as 1.2) reads `s` unquoted as exactly this string: it starts with a
/// letter, holds no character with a meaning in YAML, and is no boolean or null word. Names and
/// base64 stay plain, as in hand-written manifests; anything else is double-quoted.
fn plain(s: &str) -> bool {
    const WORDS: [&str; 10] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan",
    ];
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_' | b'+' | b'=')
        })
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

fn scalar(s: &str) -> String {
    if plain(s) {
        s.to_owned()
    } else {
        // A JSON string is a valid YAML double-quoted scalar with the same meaning.
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

fn emit(out: &mut String, node: &Node, indent: usize) {
    let Node::Map(entries) = node else {
        unreachable!("documents and nested values are maps; strings are emitted inline")
    };
    for (k, v) in entries {
        let key = scalar(k);
        out.push_str(&" ".repeat(indent));
        match v {
            Node::Str(s) => out.push_str(&format!("{key}: {}\n", scalar(s))),
            Node::Map(m) if m.is_empty() => out.push_str(&format!("{key}: {{}}\n")),
            Node::Map(_) => {
                out.push_str(&format!("{key}:\n"));
                emit(out, v, indent + 2);
            }
        }
    }
}

/// Multi-document YAML: `---`, the comment, the object, for each manifest.
pub fn to_yaml(header: &str, manifests: &[Manifest]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    for m in manifests {
        out.push_str("---\n");
        for line in m.comment.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        emit(&mut out, &m.object, 0);
    }
    out
}

/// A `v1` `List`, which `kubectl apply -f -` reads like the documents of a YAML stream.
pub fn to_json_list(manifests: &[Manifest]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": manifests.iter().map(|m| m.object.to_json()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;
    use crate::k8s::release::ReleaseSpec;

    fn release() -> Release {
        ReleaseSpec {
            release: "dsm".into(),
            namespace: "123".into(),
            cluster_domain: "cluster.local".into(),
            gateway_port: 7443,
            peer_port: 7444,
            ..ReleaseSpec::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn a_secret_prints_as_the_chart_readme_shows_it() {
        let r = release();
        let data = BTreeMap::from([("node.kek", b"dsm-kek-v1:abc".to_vec())]);
        let yaml = to_yaml(
            "header",
            &[Manifest {
                comment: "node dsm-mesh-3".into(),
                object: secret(
                    &r,
                    "dsm-mesh-node-3-kek",
                    Component::NodeKek,
                    "Opaque",
                    &data,
                ),
            }],
        );
        assert_eq!(
            yaml,
            "# header\n---\n# node dsm-mesh-3\napiVersion: v1\nkind: Secret\nmetadata:\n  \
             name: dsm-mesh-node-3-kek\n  namespace: \"123\"\n  labels:\n    \
             app.kubernetes.io/instance: dsm\n    app.kubernetes.io/part-of: dark-store-mesh\n    \
             app.kubernetes.io/managed-by: mesh-ctl\n    app.kubernetes.io/component: node-kek\n\
             type: Opaque\ndata:\n  node.kek: ZHNtLWtlay12MTphYmM=\n"
        );
    }

    #[test]
    fn json_keeps_the_same_objects() {
        let r = release();
        let data = BTreeMap::from([("layout.bin", vec![0u8, 255, 10])]);
        let cm = binary_config_map(&r, "dsm-mesh-layout", Component::Layout, &data);
        let list = to_json_list(&[Manifest {
            comment: String::new(),
            object: cm.clone(),
        }]);
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"][0]["binaryData"]["layout.bin"], "AP8K");
        assert_eq!(list["items"][0]["metadata"]["namespace"], "123");
        assert_eq!(
            cm.get(&["metadata", "labels", "app.kubernetes.io/managed-by"]),
            Some(&Node::str("mesh-ctl"))
        );
    }

    #[test]
    fn odd_keys_and_values_are_quoted() {
        let mut out = String::new();
        emit(
            &mut out,
            &Node::map([
                ("tls.crt", Node::str("no")),
                ("Yes", Node::str("1")),
                ("1x", Node::str("a\"b\n")),
                ("k", Node::str("a: b")),
            ]),
            0,
        );
        assert_eq!(
            out,
            "tls.crt: \"no\"\n\"Yes\": \"1\"\n\"1x\": \"a\\\"b\\n\"\nk: \"a: b\"\n"
        );
    }
}
