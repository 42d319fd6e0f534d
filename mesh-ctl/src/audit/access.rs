//! `mesh-ctl access show`: the role table exactly as nodes enforce it.
//!
//! It prints `mesh_node::access::policy::ROLE_TABLE` itself (the same static data the node's gateway and
//! projection read), never a copy, plus the `[access]` settings of a node config when given one.

use crate::Output;
use anyhow::Context as _;
use mesh_node::access::policy::{Field, Method, ROLE_TABLE, Visibility};
use mesh_node::access::windows::AccessRules;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum AccessCommand {
    /// Print the role table: methods, field visibility, reveals, statuses, field writes and windows
    /// per role.
    Show(ShowArgs),
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A node config whose `[access]` settings to show (grace, reveal limit, purpose); without
    /// it, the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(command: AccessCommand, output: Output) -> anyhow::Result<()> {
    let AccessCommand::Show(args) = command;
    let rules = match &args.config {
        None => AccessRules::default(),
        Some(path) => {
            mesh_node::ops::config::Config::load(Some(path), &mesh_node::ops::config::Env)
                .with_context(|| format!("loading {}", path.display()))?
                .access
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&as_json(&rules))?),
        Output::Table => {
            use std::io::Write as _;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(table(&rules).as_bytes());
        }
    }
    Ok(())
}

fn as_json(rules: &AccessRules) -> serde_json::Value {
    let roles: Vec<_> = ROLE_TABLE
        .iter()
        .map(|row| {
            let fields: serde_json::Map<String, serde_json::Value> = Field::ALL
                .into_iter()
                .map(|f| {
                    (
                        f.path().to_owned(),
                        json!(mesh_node::access::policy::visibility(row.role, f).as_str()),
                    )
                })
                .collect();
            json!({
                "role": row.role.as_str(),
                "job": row.job,
                "methods": row.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "fields": fields,
                "reveal": row.reveal.iter().map(|f| f.path()).collect::<Vec<_>>(),
                "statuses": row.statuses.iter().map(|s| s.as_str_name()).collect::<Vec<_>>(),
                "writes": row.writes.iter().map(|(f, w)| json!({"field": f.path(), "when": w.as_str()})).collect::<Vec<_>>(),
                "window": row.window.as_str(),
                "purpose_required": rules.requires_purpose(row.role),
            })
        })
        .collect();
    json!({
        "roles": roles,
        "methods": Method::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "fields": Field::ALL.iter().map(|f| f.path()).collect::<Vec<_>>(),
        "contact_grace": humantime::format_duration(rules.contact_grace).to_string(),
        "reveal_limit": rules.reveal_limit,
        "reveal_window": humantime::format_duration(rules.reveal_window).to_string(),
    })
}

fn symbol(v: Visibility) -> &'static str {
    match v {
        Visibility::Full => "F",
        Visibility::Masked => "M",
        Visibility::FirstName => "1",
        Visibility::Withheld => ".",
    }
}

fn list<T, S: AsRef<str>>(items: &[T], name: impl Fn(&T) -> S) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items
            .iter()
            .map(|i| name(i).as_ref().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn table(rules: &AccessRules) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for row in ROLE_TABLE {
        let _ = writeln!(out, "{:<11} {}", row.role.as_str(), row.job);
        let _ = writeln!(out, "  methods   {}", list(row.methods, |m| m.as_str()));
        let _ = writeln!(out, "  reveal    {}", list(row.reveal, |f| f.path()));
        let _ = writeln!(
            out,
            "  statuses  {}",
            list(row.statuses, |s| s.as_str_name())
        );
        let _ = writeln!(
            out,
            "  writes    {}",
            list(row.writes, |(f, w)| format!(
                "{} ({})",
                f.path(),
                w.as_str()
            ))
        );
        let _ = writeln!(
            out,
            "  buyer     {}; purpose {}",
            row.window.as_str(),
            if rules.requires_purpose(row.role) {
                "required"
            } else {
                "optional"
            }
        );
    }
    let _ = write!(out, "\n{:<26}", "field");
    for row in ROLE_TABLE {
        let name = row.role.as_str();
        let _ = write!(out, " {:>4}", &name[..4.min(name.len())]);
    }
    out.push('\n');
    for f in Field::ALL {
        let _ = write!(out, "{:<26}", f.path());
        for row in ROLE_TABLE {
            let _ = write!(
                out,
                " {:>4}",
                symbol(mesh_node::access::policy::visibility(row.role, f))
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nF full, M masked, 1 first name, . withheld. Contact grace {}; reveals {} per {} per principal.",
        humantime::format_duration(rules.contact_grace),
        rules.reveal_limit,
        humantime::format_duration(rules.reveal_window)
    );
    out
}
