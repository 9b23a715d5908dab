//! Settings layering both services share: built-in defaults < an optional TOML file (`--config`)
//! < the environment (`<PREFIX>_*` and a few unprefixed names) < command-line flags, merged by
//! figment and extracted into the service's raw settings, which the service then validates with
//! [`invalid`] and [`at_least_one`] so a bad value stops start-up naming the key and the value.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a service's environment variables come from.
#[derive(Debug, Clone, Copy)]
pub struct EnvLayer<'a> {
    /// Prefix of the service's variables, e.g. `INGESTOR_`; the rest of the name is the key.
    pub prefix: &'static str,
    /// Prefixed variables that are not settings (e.g. `config`, read by the command line).
    pub not_settings: &'a [&'static str],
    /// Unprefixed variables that set a key, as `(variable, key)`, e.g. `("DATABASE_URL",
    /// "database_url")`; they lose to the prefixed ones.
    pub aliases: &'a [(&'static str, &'static str)],
}

/// Layers `Raw::default()`, the TOML file (when given), the environment and `flags` (a
/// serializable struct whose `None` fields are skipped), and extracts the raw settings.
///
/// # Errors
/// [`ConfigError::MissingFile`] for a TOML file that does not exist (figment would silently
/// ignore it, which would hide a typo), [`ConfigError::Layering`] for a value of the wrong type
/// or an unknown key (figment names key, value and source).
pub fn layered<Raw>(
    config_file: Option<&Path>,
    env: EnvLayer<'_>,
    flags: &impl Serialize,
) -> Result<Raw, ConfigError>
where
    Raw: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(Raw::default()));
    if let Some(path) = config_file {
        figment = figment.merge(Toml::file_exact(
            existing_file(path).map_err(ConfigError::MissingFile)?,
        ));
    }
    for &(variable, key) in env.aliases {
        figment = figment.merge(Env::raw().only(&[variable]).map(move |_| key.into()));
    }
    figment
        .merge(Env::prefixed(env.prefix).ignore(env.not_settings))
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| ConfigError::Layering(Box::new(e)))
}

/// The error for `key` = `value`, with what a valid value looks like.
pub fn invalid(key: &'static str, value: impl Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks that every `(key, value)` is at least 1 (counts and intervals where 0 would stall the
/// service or divide by zero).
///
/// # Errors
/// [`ConfigError::Invalid`] for the first key that is 0.
pub fn at_least_one(keys: &[(&'static str, u64)]) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, value)| *value == 0) {
        Some(&(key, value)) => Err(invalid(key, value, "must be at least 1")),
        None => Ok(()),
    }
}

/// `path` if it names an existing file.
///
/// # Errors
/// The path, when there is no such file.
pub fn existing_file(path: &Path) -> Result<&Path, PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(path.to_owned())
    }
}

/// Why a service's configuration cannot be used; `main` prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named configuration file does not exist.
    #[error("configuration file `{0}` does not exist")]
    MissingFile(PathBuf),
    /// A value could not be read as the key's type (figment names key, value and source).
    #[error("invalid configuration: {0}")]
    Layering(#[from] Box<figment::Error>),
    /// A value has the right type but is unusable.
    #[error("invalid configuration: key `{key}` = `{value}`: {reason}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// The offending value as given (passwords masked).
        value: String,
        /// What a valid value looks like.
        reason: String,
    },
}

/// One row of a settings table in `docs/configuration.md`: `| key | flag | env | type | default
/// | meaning | range |`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedKey {
    /// The TOML key (the first cell, without backticks).
    pub key: String,
    /// The environment variable cell, as written.
    pub env: String,
    /// The default cell, as written.
    pub default: String,
}

/// The rows of `markdown`'s settings tables whose environment cell names a `prefix` variable,
/// for the services' tests that hold the documentation to the declared settings (every key
/// documented, every documented key real, every default shown the real one).
pub fn documented_keys(markdown: &str, prefix: &str) -> Vec<DocumentedKey> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells = table_cells(line.strip_prefix('|')?);
            let key = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let env = cells.get(2)?;
            // Settings keys are snake_case; other tables list variables (`STACK_ADMIN_URL`).
            let is_key = key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            (env.contains(prefix) && is_key).then(|| DocumentedKey {
                key: key.to_owned(),
                env: env.clone(),
                default: cells.get(4).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// A table row's cells, split on the `|`s that are not escaped (`\|` stands inside a cell).
fn table_cells(row: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cell.push('|');
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

/// The first `` `literal` `` of a table cell, e.g. the value of a default cell.
pub fn first_literal(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(&cell[start..end])
}

/// Checks a service's documented settings against its declared ones: `defaults` is its raw
/// settings' `Default`, serialized (one JSON field per key). Returns every disagreement.
pub fn undocumented(
    defaults: &serde_json::Value,
    documented: &[DocumentedKey],
    prefix: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(fields) = defaults.as_object() else {
        return vec!["the defaults are not a JSON object".to_owned()];
    };
    for (key, value) in fields {
        let Some(row) = documented.iter().find(|row| row.key == *key) else {
            problems.push(format!("`{key}` is not documented"));
            continue;
        };
        let env = format!("{prefix}{}", key.to_uppercase());
        if !row.env.contains(&env) {
            problems.push(format!("`{key}`: the environment cell does not name {env}"));
        }
        let shown = first_literal(&row.default);
        let agrees = match value {
            serde_json::Value::Null => true,
            serde_json::Value::String(s) => shown == Some(s.as_str()),
            serde_json::Value::Number(n) => shown
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|s| Some(s) == n.as_f64()),
            other => shown == Some(other.to_string().as_str()),
        };
        if !agrees {
            problems.push(format!(
                "`{key}`: documented default {:?}, real default {value}",
                row.default
            ));
        }
    }
    for row in documented {
        if !fields.contains_key(&row.key) {
            problems.push(format!("`{}` is documented but is no setting", row.key));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_docs_table_reader_splits_escaped_pipes_and_finds_disagreements() {
        let docs = "| Key | Flag | Env | Type | Default |\n\
            |---|---|---|---|---|\n\
            | `a` | `--a <x\\|y>` | `P_A` | int | `10` (ten) | m | r |\n\
            | `b` | – | `P_B` | text | `on` | m | r |\n\
            | `gone` | – | `P_GONE` | text | `x` | m | r |\n";
        let rows = documented_keys(docs, "P_");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].default, "`10` (ten)");
        let defaults = serde_json::json!({ "a": 10, "b": "off", "c": null });
        assert_eq!(
            undocumented(&defaults, &rows, "P_"),
            [
                "`b`: documented default \"`on`\", real default \"off\"",
                "`c` is not documented",
                "`gone` is documented but is no setting",
            ]
        );
    }
}
