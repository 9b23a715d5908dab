//! Settings layering both services share: built-in defaults < an optional TOML file (`--config`)
//! < the environment (`<PREFIX>_*` and a few unprefixed names) < command-line flags, merged by
//! figment and extracted into the service's raw settings (declared once with
//! [`declare_settings!`](crate::declare_settings)), which the service then validates, with
//! [`invalid`] for a bad value, so a bad value stops start-up naming the key and the value.
//!
//! Also the tests' half of "one declaration per setting": [`docs_problems`] holds
//! `docs/configuration.md` to the declared keys, and [`flag_problems`] the command line.

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
