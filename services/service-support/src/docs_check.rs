//! The checks that hold a service's documentation and command line to its declared settings
//! (see [`crate::settings`]): every key documented in `docs/configuration.md` with its
//! environment variable, real default and range, every documented key real, every flag a key.
//! Used by the tests that `declaration_tests!` generates in each service.

use serde::Serialize;

use crate::settings::{Declared, Key};

/// One row of a settings table in `docs/configuration.md`: `| key | flag | env | type | default
/// | meaning | range |`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedKey {
    /// The TOML key (the first cell, without backticks).
    pub key: String,
    /// The flag cell, as written (`–` for none).
    pub flag: String,
    /// The environment variable cell, as written.
    pub env: String,
    /// The default cell, as written.
    pub default: String,
    /// The meaning cell, as written.
    pub meaning: String,
    /// The valid-range cell, as written.
    pub range: String,
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
            let cell = |i: usize| cells.get(i).cloned().unwrap_or_default();
            (env.contains(prefix) && is_key).then(|| DocumentedKey {
                key: key.to_owned(),
                flag: cell(1),
                env: env.clone(),
                default: cell(4),
                meaning: cell(5),
                range: cell(6),
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

/// Every disagreement between `R`'s declaration and `markdown`'s settings tables (the rows
/// whose environment cell names a `prefix` variable): see [`undocumented`].
pub fn docs_problems<R: Declared + Default + Serialize>(
    markdown: &str,
    prefix: &str,
) -> Vec<String> {
    match serde_json::to_value(R::default()) {
        Ok(defaults) => undocumented(
            &R::keys(),
            &defaults,
            &documented_keys(markdown, prefix),
            prefix,
        ),
        Err(e) => vec![format!("the defaults cannot be serialized: {e}")],
    }
}

/// Checks a service's documented settings against its declared ones: `keys` as declared,
/// `defaults` its raw settings' `Default`, serialized (one JSON field per key). Every key must
/// have a doc line and a row naming its `<prefix><KEY>` variable, its real default, a meaning,
/// and each bound of its declared range; every documented key must be declared. Returns every
/// disagreement.
pub fn undocumented(
    keys: &[Key],
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
        if !shows_default(first_literal(&row.default), value) {
            problems.push(format!(
                "`{key}`: documented default {:?}, real default {value}",
                row.default
            ));
        }
        if row.meaning.is_empty() {
            problems.push(format!("`{key}`: the meaning cell is empty"));
        }
        let declared = keys.iter().find(|k| k.name == key);
        if declared.is_none_or(|k| k.doc.trim().is_empty()) {
            problems.push(format!("`{key}`: no doc line in its declaration"));
        }
        for bound in declared.map(|k| k.bounds.as_slice()).unwrap_or_default() {
            if !mentions_number(&row.range, bound) {
                problems.push(format!(
                    "`{key}`: the range cell {:?} does not mention the declared bound {bound}",
                    row.range
                ));
            }
        }
    }
    for row in documented {
        if !fields.contains_key(&row.key) {
            problems.push(format!("`{}` is documented but is no setting", row.key));
        }
    }
    problems
}

/// Checks a service's command line against its declared settings: every long flag of
/// `command` other than `not_settings` (e.g. `config`) is a declared key (`-` for `_`) with a
/// help text, whose `[default: ...]`, where it shows one, is the real default, and which the
/// key's docs row names; and every flag a docs row names exists. Returns every disagreement.
pub fn flag_problems<R: Declared + Default + Serialize>(
    command: &clap::Command,
    not_settings: &[&str],
    markdown: &str,
    prefix: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let defaults = serde_json::to_value(R::default()).unwrap_or_default();
    let documented = documented_keys(markdown, prefix);
    let keys = R::keys();
    let mut flags = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if ["help", "version"].contains(&long) || not_settings.contains(&long) {
            continue;
        }
        flags.push(long);
        let key = long.replace('-', "_");
        if !keys.iter().any(|k| k.name == key) {
            problems.push(format!("--{long} names no declared setting"));
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        if help.trim().is_empty() {
            problems.push(format!("--{long} has no help text"));
        }
        let shown = help
            .split_once("[default: ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(shown, _)| shown);
        let real = &defaults[key.as_str()];
        if shown.is_some() && !shows_default(shown, real) {
            problems.push(format!(
                "--{long}: help shows default {shown:?}, real default {real}"
            ));
        }
        if let Some(row) = documented.iter().find(|row| row.key == key) {
            if !row.flag.contains(&format!("`--{long}")) {
                problems.push(format!("`{key}`: the flag cell does not name --{long}"));
            }
        }
    }
    for row in &documented {
        if let Some(long) = first_literal(&row.flag).and_then(|f| f.strip_prefix("--")) {
            let long = long.split_whitespace().next().unwrap_or_default();
            if !flags.contains(&long) {
                problems.push(format!(
                    "`{}`: documents --{long}, which does not exist",
                    row.key
                ));
            }
        }
    }
    problems
}

/// Whether a default shown as `shown` is `value` (a `null` value, an unset optional key, is
/// described in words and agrees with anything).
fn shows_default(shown: Option<&str>, value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => shown == Some(s.as_str()),
        serde_json::Value::Number(n) => shown
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|s| Some(s) == n.as_f64()),
        other => shown == Some(other.to_string().as_str()),
    }
}

/// Whether `text` holds `number` as a number of its own (not as part of a longer one).
fn mentions_number(text: &str, number: &str) -> bool {
    text.match_indices(number).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let mut after = text[at + number.len()..].chars();
        let continues = match after.next() {
            Some('.') => after.next().is_some_and(|c| c.is_ascii_digit()),
            next => next.is_some_and(|c| c.is_ascii_digit()),
        };
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.') && !continues
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(name: &'static str, bounds: &[&str]) -> Key {
        Key {
            name,
            doc: " A key.\n",
            bounds: bounds.iter().map(|b| (*b).to_owned()).collect(),
        }
    }

    #[test]
    fn the_docs_table_reader_splits_escaped_pipes_and_finds_disagreements() {
        let docs = "| Key | Flag | Env | Type | Default |\n\
            |---|---|---|---|---|\n\
            | `a` | `--a <x\\|y>` | `P_A` | int | `10` (ten) | m | ≥ 1. |\n\
            | `b` | – | `P_B` | text | `on` | m | r |\n\
            | `d` | – | `P_D` | float | `0.5` |  | `0 ..= 10` |\n\
            | `gone` | – | `P_GONE` | text | `x` | m | r |\n";
        let rows = documented_keys(docs, "P_");
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].default, "`10` (ten)");
        assert_eq!(rows[0].flag, "`--a <x|y>`");
        let defaults = serde_json::json!({ "a": 10, "b": "off", "c": null, "d": 0.5 });
        let keys = [
            key("a", &["1"]),
            key("b", &[]),
            key("c", &[]),
            key("d", &["0", "1"]),
        ];
        assert_eq!(
            undocumented(&keys, &defaults, &rows, "P_"),
            [
                "`b`: documented default \"`on`\", real default \"off\"",
                "`c` is not documented",
                "`d`: the meaning cell is empty",
                "`d`: the range cell \"`0 ..= 10`\" does not mention the declared bound 1",
                "`gone` is documented but is no setting",
            ]
        );
    }

    #[test]
    fn a_number_is_mentioned_only_on_its_own() {
        assert!(mentions_number("≥ 1.", "1"));
        assert!(mentions_number("`0 ..= 1048576`", "1048576"));
        assert!(!mentions_number("`0 ..= 10`", "1"));
        assert!(!mentions_number("0.15", "1"));
        assert!(!mentions_number("1.5", "1"));
    }
}
