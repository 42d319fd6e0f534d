//! What every command prints on stdout: JSON for `-o json`, a table or text for `-o table`. Logs and
//! progress go to stderr, never here, so stdout can be piped.

use crate::Output;

/// Prints `json` for `-o json`, else the human text.
pub fn print(
    output: Output,
    json: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(json)?),
        Output::Table => println!("{}", text()),
    }
    Ok(())
}
