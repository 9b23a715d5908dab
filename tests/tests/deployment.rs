#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment files, checked without a Docker engine: `docker-compose.yml`, `.env`,
//! `services/Dockerfile` and the `.dockerignore` files.
//!
//! Why this file exists: no Docker engine runs where the tests run, and Debian's
//! `docker-compose` 1.29 rejects the file's top-level `name:` and `environment:` secrets, so
//! nothing else would notice a mount of a missing file, an undefined variable, a stage that
//! does not exist, or a health check calling a subcommand the binary does not have, until
//! someone runs `docker compose up`. Each check is a function from the parsed files to a list
//! of problems, each naming the service, key or path at fault; the tests run them on the real
//! files (and expect no problem) and on broken copies (and expect the problem to be reported).
//!
//! The commands of our images run against the binaries `cargo test --workspace` builds
//! (`target/debug/generator` and `target/debug/ingestor`, next to this test's own executable, so
//! `CARGO_TARGET_DIR` is honoured). The generator's shell health check and the ingestor's
//! environment even run for real. `.ci/run` separately runs the Dockerfile's release build
//! command on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use stack_tests::{free_port, workspace_root, ChildGuard};

/// The compose file, relative to the workspace root.
const COMPOSE_FILE: &str = "docker-compose.yml";
/// The variables `docker compose` substitutes into the compose file.
const ENV_FILE: &str = ".env";
/// The one Dockerfile, for both services.
const DOCKERFILE: &str = "services/Dockerfile";
/// The Dockerfile's own ignore file (BuildKit) and the context's (classic builder).
const DOCKERIGNORE_FILES: [&str; 2] = ["services/Dockerfile.dockerignore", ".dockerignore"];
/// Provisioning files that read secrets with Grafana's `$__file{...}`, and the service reading them.
const GRAFANA_SECRET_READERS: [(&str, &str); 1] = [(
    "grafana/provisioning/datasources/datasources.yml",
    "grafana",
)];

/// The prefix of the release build command in the Dockerfile, as `.ci/run` extracts it.
const BUILD_COMMAND: &str = "cargo build --release --locked";

/// Top-level keys of the Compose Specification (besides `x-*` extensions).
const TOP_LEVEL_KEYS: [&str; 8] = [
    "name", "services", "networks", "volumes", "secrets", "configs", "include", "models",
];

/// Services whose root filesystem may stay writable, and why.
const WRITABLE_ROOT: [(&str, &str); 2] = [
    (
        "secret-init",
        "Compose copies `environment:` secrets into the container's filesystem",
    ),
    (
        "pgadmin",
        "the image's entrypoint writes /pgadmin4/config_distro.py at every start",
    ),
];
/// Services with another restart policy than `unless-stopped`: (service, policy, why).
const RESTART_EXCEPTIONS: [(&str, &str, &str); 2] = [
    (
        "secret-init",
        "no",
        "a one-shot job; unless-stopped would loop",
    ),
    (
        "generator",
        "on-failure",
        "a finite run (GENERATOR_FILES > 0) ends with exit 0 and must stay ended",
    ),
];
/// Services without a health check, and why.
const NO_HEALTHCHECK: [(&str, &str); 1] = [(
    "secret-init",
    "a one-shot job; dependants wait for service_completed_successfully",
)];
/// The only services that publish a port on the host (always on 127.0.0.1).
const PUBLISHING: [&str; 2] = ["grafana", "pgadmin"];
/// Our services whose health check is not a subcommand of our binaries (each would need a test
/// that runs it for real); none today: both use their binary's `healthcheck` subcommand.
const LIVE_CHECKED_HEALTHCHECKS: [&str; 0] = [];

/// The ingestor's `connect_timeout_ms` default: a stop during an outage may wait this long for
/// a connection before the drain even starts (docs/architecture.md, "Shutdown").
const INGESTOR_CONNECT_TIMEOUT_MS: f64 = 5_000.0;
/// The ingestor's `drain_timeout_ms` default, when the compose file does not set it.
const INGESTOR_DEFAULT_DRAIN_TIMEOUT_MS: f64 = 10_000.0;

/// Variables of `.env`: name to value.
type Env = BTreeMap<String, String>;

/// The deployment files of one tree: the real repository, or a broken copy in a test.
struct Stack {
    /// Where relative paths of the compose file are resolved.
    root: PathBuf,
    /// The parsed compose file.
    compose: Value,
    /// The variables of `.env`.
    env: Env,
    /// The text of the Dockerfile.
    dockerfile: String,
}

impl Stack {
    /// Reads the repository's files; panics with the parse error if one cannot be read.
    fn load() -> Stack {
        let root = workspace_root();
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path))
                .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        };
        Stack::from_texts(
            &root,
            &read(COMPOSE_FILE),
            &read(ENV_FILE),
            &read(DOCKERFILE),
        )
    }

    /// Parses the given texts as the files of a tree rooted at `root`.
    fn from_texts(root: &Path, compose: &str, env: &str, dockerfile: &str) -> Stack {
        let compose = parse_compose(compose).unwrap_or_else(|e| panic!("{COMPOSE_FILE}: {e}"));
        let (env, problems) = parse_env(env);
        assert!(problems.is_empty(), "{ENV_FILE}: {problems:#?}");
        Stack {
            root: root.to_path_buf(),
            compose,
            env,
            dockerfile: dockerfile.to_owned(),
        }
    }

    /// The services, by name.
    fn services(&self) -> Vec<(String, &Value)> {
        self.compose
            .get("services")
            .and_then(Value::as_mapping)
            .map(|services| {
                services
                    .iter()
                    .filter_map(|(name, service)| Some((name.as_str()?.to_owned(), service)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One service; panics if it does not exist.
    fn service(&self, name: &str) -> &Value {
        self.compose
            .get("services")
            .and_then(|services| services.get(name))
            .unwrap_or_else(|| panic!("{COMPOSE_FILE} has no service `{name}`"))
    }

    /// `text` with the compose file's substitution applied (`$$` becomes `$`).
    fn interpolate(&self, text: &str) -> String {
        interpolate(text, &self.env)
            .unwrap_or_else(|e| panic!("{e}"))
            .value
    }

    /// A service's `environment:`, substituted, as the container would see it.
    fn environment(&self, service: &str) -> BTreeMap<String, String> {
        raw_environment(self.service(service))
            .into_iter()
            .map(|(key, value)| (key, self.interpolate(&value)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses the compose file (YAML anchors and aliases are resolved by the parser).
fn parse_compose(text: &str) -> Result<Value, String> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    value.apply_merge().map_err(|e| e.to_string())?;
    if !value.is_mapping() {
        return Err("the top level is not a mapping".to_owned());
    }
    Ok(value)
}

/// Parses `.env` the way Compose does for the forms we use: `KEY=value`, quotes around a value,
/// `#` comments (whole lines, or after a space in an unquoted value). Returns the variables and
/// a problem per malformed or repeated line.
fn parse_env(text: &str) -> (Env, Vec<String>) {
    let mut env = Env::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            problems.push(format!("{ENV_FILE} line {line_number}: not KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if !is_variable_name(key) {
            problems.push(format!(
                "{ENV_FILE} line {line_number}: `{key}` is not a variable name"
            ));
            continue;
        }
        let value = value.trim();
        let value = match (value.chars().next(), value.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(end)) if value.len() >= 2 && end == q => {
                value[1..value.len() - 1].to_owned()
            }
            _ => value
                .split_once(" #")
                .map_or(value, |(before, _)| before)
                .trim_end()
                .to_owned(),
        };
        if env.insert(key.to_owned(), value).is_some() {
            problems.push(format!(
                "{ENV_FILE} line {line_number}: `{key}` is defined twice"
            ));
        }
    }
    (env, problems)
}

/// A shell/Compose variable name.
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A string after Compose's substitution, and the variables it named.
struct Interpolated {
    /// The substituted text.
    value: String,
    /// Every variable referenced, in order (also those with a default).
    variables: Vec<String>,
}

/// Compose's variable substitution: `$$` is a literal `$`; `${VAR}`, `$VAR`, and `${VAR:-x}`,
/// `${VAR-x}`, `${VAR:?msg}`, `${VAR?msg}`, `${VAR:+x}`, `${VAR+x}`. An unset variable becomes
/// the empty string (it is still listed). A lone `$` is an error, as in Compose.
fn interpolate(text: &str, env: &Env) -> Result<Interpolated, String> {
    let mut value = String::new();
    let mut variables = Vec::new();
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        value.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            value.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let inner = &braced[..end];
            let name_end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, operator) = inner.split_at(name_end);
            if !is_variable_name(name) {
                return Err(format!("`${{{inner}}}` in {text:?} names no variable"));
            }
            variables.push(name.to_owned());
            let set = env.get(name);
            let non_empty = set.filter(|v| !v.is_empty());
            let resolved = if operator.is_empty() || operator.starts_with('?') {
                set.cloned().unwrap_or_default()
            } else if operator.starts_with(":?") {
                non_empty.cloned().unwrap_or_default()
            } else if let Some(default) = operator.strip_prefix(":-") {
                non_empty.map_or_else(|| default.to_owned(), Clone::clone)
            } else if let Some(default) = operator.strip_prefix('-') {
                set.map_or_else(|| default.to_owned(), Clone::clone)
            } else if let Some(alternative) = operator.strip_prefix(":+") {
                non_empty.map_or_else(String::new, |_| alternative.to_owned())
            } else if let Some(alternative) = operator.strip_prefix('+') {
                set.map_or_else(String::new, |_| alternative.to_owned())
            } else {
                return Err(format!("`${{{inner}}}` in {text:?}: unknown operator"));
            };
            value.push_str(&resolved);
            rest = &braced[end + 1..];
        } else {
            let name_end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_end];
            if !is_variable_name(name) {
                return Err(format!(
                    "a lone `$` in {text:?}: write `$$` for a literal dollar sign"
                ));
            }
            variables.push(name.to_owned());
            value.push_str(env.get(name).map_or("", String::as_str));
            rest = &after[name_end..];
        }
    }
    value.push_str(rest);
    Ok(Interpolated { value, variables })
}

/// Every string scalar of `value` (mapping values and sequence items, not keys, which Compose
/// does not substitute), with its path, e.g. `services.ingestor.environment.DATABASE_URL`.
fn string_values<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((path.to_owned(), s)),
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                string_values(item, &format!("{path}[{index}]"), out);
            }
        }
        Value::Mapping(mapping) => {
            for (key, item) in mapping {
                let key = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                let path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                string_values(item, &path, out);
            }
        }
        Value::Tagged(tagged) => string_values(&tagged.value, path, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A scalar as text (Compose accepts numbers and booleans where it expects strings).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings, or a single string (Compose's two forms of many keys).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        Some(other) => scalar(other).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A service's `environment:` before substitution, from either the mapping or the list form.
fn raw_environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Mapping(mapping)) => mapping
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v).unwrap_or_default())))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| {
                let (key, value) = item.split_once('=').unwrap_or((item, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `depends_on` as (dependency, condition); the list form means `service_started`.
fn dependencies(service: &Value) -> Vec<(String, String)> {
    match service.get("depends_on") {
        Some(Value::Mapping(mapping)) => mapping
            .iter()
            .filter_map(|(name, spec)| {
                let condition = spec
                    .get("condition")
                    .and_then(Value::as_str)
                    .unwrap_or("service_started");
                Some((name.as_str()?.to_owned(), condition.to_owned()))
            })
            .collect(),
        other => strings(other)
            .into_iter()
            .map(|name| (name, "service_started".to_owned()))
            .collect(),
    }
}

/// The health check's command, or `None` when there is none or it is disabled.
fn healthcheck_test(service: &Value) -> Option<Vec<String>> {
    let healthcheck = service.get("healthcheck")?;
    if healthcheck.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let test = strings(healthcheck.get("test"));
    match test.first().map(String::as_str) {
        None | Some("NONE") => None,
        Some(_) => Some(test),
    }
}

/// Whether an image reference names a tag other than `latest`, or a digest.
fn image_is_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    matches!(last.split_once(':'), Some((_, tag)) if !tag.is_empty() && tag != "latest")
}

/// A Go duration as Compose writes them (`30s`, `1m30s`, `500ms`), in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 6e4,
            "h" => 3.6e6,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// One Dockerfile instruction, continuation lines joined.
struct Instruction {
    /// Upper case, e.g. `COPY`.
    keyword: String,
    /// Everything after the keyword.
    args: String,
}

/// One build stage.
struct Stage {
    /// The `AS` name, or the stage's index.
    name: String,
    /// The image or earlier stage it starts from.
    base: String,
    /// Its instructions after `FROM`.
    instructions: Vec<Instruction>,
}

/// Splits a Dockerfile into stages of instructions. Comments (and parser directives) are
/// dropped, also between continuation lines, as Docker does.
fn parse_dockerfile(text: &str) -> Result<Vec<Stage>, String> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        logical.push(current);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let base = (*words.first().ok_or("FROM without an image")?).to_owned();
            let name = match words.get(1..3) {
                Some([r#as, name]) if r#as.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => stages.len().to_string(),
            };
            stages.push(Stage {
                name,
                base,
                instructions: Vec::new(),
            });
        } else if keyword != "ARG" || !stages.is_empty() {
            stages
                .last_mut()
                .ok_or_else(|| format!("{keyword} before the first FROM"))?
                .instructions
                .push(Instruction { keyword, args });
        }
    }
    Ok(stages)
}

/// The stage called `name` and the stages it is built on, the root first.
fn stage_chain<'a>(stages: &'a [Stage], name: &str) -> Vec<&'a Stage> {
    let mut chain = Vec::new();
    let mut next = Some(name.to_owned());
    while let Some(name) = next.take() {
        if let Some(stage) = stages.iter().find(|s| s.name == name) {
            if chain.iter().any(|s: &&Stage| s.name == stage.name) {
                break; // a cycle; reported as an unknown base elsewhere
            }
            next = Some(stage.base.clone());
            chain.push(stage);
        }
    }
    chain.reverse();
    chain
}

/// The image configuration a target stage ends up with (inherited through its base stages).
#[derive(Default)]
struct ImageConfig {
    /// The last `USER`.
    user: Option<String>,
    /// The last `STOPSIGNAL`.
    stop_signal: Option<String>,
    /// The `ENTRYPOINT`, as written.
    entrypoint: Option<String>,
    /// The `CMD`, as written (reset by a later `ENTRYPOINT`, as Docker does).
    cmd: Option<String>,
    /// Destinations of `COPY` and `ADD`.
    copied_to: Vec<String>,
}

/// Folds a stage chain into the configuration of its image.
fn image_config(chain: &[&Stage]) -> ImageConfig {
    let mut config = ImageConfig::default();
    for instruction in chain.iter().flat_map(|stage| &stage.instructions) {
        let args = instruction.args.clone();
        match instruction.keyword.as_str() {
            "USER" => config.user = Some(args),
            "STOPSIGNAL" => config.stop_signal = Some(args),
            "ENTRYPOINT" => {
                config.entrypoint = Some(args);
                config.cmd = None;
            }
            "CMD" => config.cmd = Some(args),
            "COPY" | "ADD" => {
                if let Some(destination) = args.split_whitespace().last() {
                    config.copied_to.push(destination.to_owned());
                }
            }
            _ => {}
        }
    }
    config
}

/// An exec-form (JSON array) argument list; `None` for the shell form.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// The `--from=` value of a `COPY`.
fn copy_from(args: &str) -> Option<&str> {
    args.split_whitespace()
        .find_map(|word| word.strip_prefix("--from="))
}

/// The packages of every `cargo build --release --locked -p ...` on a physical, non-comment line
/// of the Dockerfile: exactly what `.ci/run` extracts and runs (one entry per such line).
fn build_commands(dockerfile: &str) -> Vec<Vec<String>> {
    dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            line.find(BUILD_COMMAND)
                .map(|at| &line[at + BUILD_COMMAND.len()..])
        })
        .map(package_flags)
        .filter(|packages| !packages.is_empty())
        .collect()
}

/// The leading `-p <package>` pairs of `text`.
fn package_flags(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .chunks(2)
        .map_while(|pair| match pair {
            ["-p", package]
                if package
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Some((*package).to_owned())
            }
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checks: each returns one message per problem, naming the service, key or path.
// ---------------------------------------------------------------------------------------------

/// No `version:` key (obsolete in the Compose Specification); only known top-level keys;
/// a `services` mapping; a project `name`.
fn check_structure(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let top = stack
        .compose
        .as_mapping()
        .expect("checked by parse_compose");
    for key in top.keys() {
        let key = key.as_str().unwrap_or_default();
        if key == "version" {
            problems.push(
                "top-level `version:` is obsolete in the Compose Specification; remove it"
                    .to_owned(),
            );
        } else if !key.starts_with("x-") && !TOP_LEVEL_KEYS.contains(&key) {
            problems.push(format!("unknown top-level key `{key}`"));
        }
    }
    if stack.services().is_empty() {
        problems.push("no `services:`".to_owned());
    }
    if stack.compose.get("name").and_then(Value::as_str).is_none() {
        problems.push("no project `name:` (it fixes volume and network names)".to_owned());
    }
    problems
}

/// Restart policy, read-only root, capabilities, no-new-privileges, memory and CPU limits, a
/// health check without curl, and Docker's init for our own images.
fn check_hardening(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let names: BTreeSet<String> = stack.services().into_iter().map(|(n, _)| n).collect();
    for exempt in WRITABLE_ROOT
        .iter()
        .map(|(n, _)| n)
        .chain(RESTART_EXCEPTIONS.iter().map(|(n, _, _)| n))
        .chain(NO_HEALTHCHECK.iter().map(|(n, _)| n))
    {
        if !names.contains(*exempt) {
            problems.push(format!(
                "exemption for service `{exempt}`, which does not exist: remove it"
            ));
        }
    }
    for (name, service) in stack.services() {
        let restart = service.get("restart").and_then(scalar).unwrap_or_default();
        let (expected_restart, why) = RESTART_EXCEPTIONS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or(("unless-stopped", "the default"), |(_, policy, why)| {
                (*policy, *why)
            });
        if restart != expected_restart {
            problems.push(format!(
                "service `{name}`: `restart: {restart}`, expected `{expected_restart}` ({why})"
            ));
        }
        let read_only = service.get("read_only").and_then(Value::as_bool) == Some(true);
        match WRITABLE_ROOT.iter().find(|(n, _)| *n == name) {
            None if !read_only => {
                problems.push(format!("service `{name}`: `read_only: true` is missing"));
            }
            Some((_, why)) if read_only => problems.push(format!(
                "service `{name}`: read-only now, so drop its exemption (\"{why}\")"
            )),
            _ => {}
        }
        if strings(service.get("cap_drop")) != ["ALL"] {
            problems.push(format!("service `{name}`: `cap_drop: [ALL]` is missing"));
        }
        if !strings(service.get("security_opt"))
            .iter()
            .any(|o| o == "no-new-privileges:true" || o == "no-new-privileges")
        {
            problems.push(format!(
                "service `{name}`: `security_opt: [no-new-privileges:true]` is missing"
            ));
        }
        let limits = service
            .get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"));
        for (short, long, what) in [("mem_limit", "memory", "memory"), ("cpus", "cpus", "CPU")] {
            let limit = service
                .get(short)
                .or_else(|| limits.and_then(|l| l.get(long)))
                .and_then(scalar)
                .map(|v| stack.interpolate(&v));
            if limit.is_none_or(|v| v.is_empty()) {
                problems.push(format!(
                    "service `{name}`: no {what} limit (`{short}` or `deploy.resources.limits.{long}`)"
                ));
            }
        }
        match healthcheck_test(service) {
            Some(test) if test.iter().any(|word| word.contains("curl")) => problems.push(format!(
                "service `{name}`: the health check uses curl, which images lack"
            )),
            Some(_) => {
                if let Some((_, why)) = NO_HEALTHCHECK.iter().find(|(n, _)| *n == name) {
                    problems.push(format!(
                        "service `{name}`: has a health check now, so drop its exemption (\"{why}\")"
                    ));
                }
            }
            None if NO_HEALTHCHECK.iter().any(|(n, _)| *n == name) => {}
            None => problems.push(format!("service `{name}`: no `healthcheck`")),
        }
        if service.get("build").is_some()
            && service.get("init").and_then(Value::as_bool) != Some(true)
        {
            problems.push(format!(
                "service `{name}`: `init: true` is missing (signal forwarding and reaping)"
            ));
        }
    }
    problems
}

/// Only Grafana and pgAdmin publish ports, and only on 127.0.0.1; no fixed container names
/// (they would stop `--scale`); the ingestor in particular has neither.
fn check_ports(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in stack.services() {
        if service.get("container_name").is_some() {
            problems.push(format!(
                "service `{name}`: `container_name` prevents `--scale` and a second project"
            ));
        }
        let ports = service
            .get("ports")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        if !ports.is_empty() && !PUBLISHING.contains(&name.as_str()) {
            problems.push(format!(
                "service `{name}`: publishes a port; only {PUBLISHING:?} may (see docs/operations.md for a local override)"
            ));
        }
        for port in &ports {
            let host_ip = match port {
                Value::Mapping(_) => port.get("host_ip").and_then(scalar),
                other => scalar(other).map(|p| stack.interpolate(&p)),
            };
            let localhost = host_ip
                .as_deref()
                .is_some_and(|p| p == "127.0.0.1" || p.starts_with("127.0.0.1:"));
            if !localhost {
                problems.push(format!(
                    "service `{name}`: port {port:?} is not bound to 127.0.0.1"
                ));
            }
        }
    }
    problems
}

/// Every `depends_on` names a service; a dependency with a health check is awaited with
/// `service_healthy`, a one-shot job with `service_completed_successfully`.
fn check_dependencies(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in stack.services() {
        for (dependency, condition) in dependencies(service) {
            let Some(target) = stack
                .compose
                .get("services")
                .and_then(|s| s.get(dependency.as_str()))
            else {
                problems.push(format!(
                    "service `{name}`: depends on `{dependency}`, which does not exist"
                ));
                continue;
            };
            let one_shot = target.get("restart").and_then(scalar).as_deref() == Some("no");
            let expected = if healthcheck_test(target).is_some() {
                "service_healthy"
            } else if one_shot {
                "service_completed_successfully"
            } else {
                continue; // has no health check: reported by check_hardening
            };
            if condition != expected {
                problems.push(format!(
                    "service `{name}`: depends_on `{dependency}` with `{condition}`, expected `{expected}`"
                ));
            }
        }
    }
    problems
}

/// Every image, in the compose file and in the Dockerfile's `FROM`s, has a tag that is not
/// `latest` (or a digest).
fn check_images(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in stack.services() {
        if let Some(image) = service.get("image").and_then(scalar) {
            let image = stack.interpolate(&image);
            if !image_is_pinned(&image) {
                problems.push(format!(
                    "service `{name}`: image `{image}` is not pinned to a tag"
                ));
            }
        } else if service.get("build").is_none() {
            problems.push(format!("service `{name}`: neither `image` nor `build`"));
        }
    }
    match parse_dockerfile(&stack.dockerfile) {
        Ok(stages) => {
            for (index, stage) in stages.iter().enumerate() {
                let earlier_stage = stages[..index].iter().any(|s| s.name == stage.base);
                if !earlier_stage && !image_is_pinned(&stage.base) {
                    problems.push(format!(
                        "{DOCKERFILE}: stage `{}` starts FROM `{}`, which is not pinned to a tag",
                        stage.name, stage.base
                    ));
                }
            }
        }
        Err(e) => problems.push(format!("{DOCKERFILE}: {e}")),
    }
    problems
}

/// Bind-mount sources, build contexts, Dockerfiles, env files and secret files exist; named
/// volumes are declared at the top level.
fn check_paths(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let declared_volumes: BTreeSet<String> = stack
        .compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let exists = |path: &str| stack.root.join(path).exists();
    for (name, service) in stack.services() {
        let volumes = service
            .get("volumes")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for volume in &volumes {
            let (kind, source) = match volume {
                Value::Mapping(_) => (
                    volume.get("type").and_then(scalar).unwrap_or_default(),
                    volume.get("source").and_then(scalar).unwrap_or_default(),
                ),
                other => {
                    let spec = stack.interpolate(&scalar(other).unwrap_or_default());
                    let parts: Vec<&str> = spec.split(':').collect();
                    if parts.len() < 2 {
                        continue; // an anonymous volume: only a container path
                    }
                    let source = parts[0].to_owned();
                    let kind = if source.starts_with(['.', '/', '~']) {
                        "bind"
                    } else {
                        "volume"
                    };
                    (kind.to_owned(), source)
                }
            };
            match kind.as_str() {
                "bind" if !exists(&source) => problems.push(format!(
                    "service `{name}`: bind-mount source `{source}` does not exist"
                )),
                "volume" if !declared_volumes.contains(&source) => problems.push(format!(
                    "service `{name}`: volume `{source}` is not declared under top-level `volumes:`"
                )),
                _ => {}
            }
        }
        if let Some(build) = service.get("build") {
            let (context, dockerfile) = match build {
                Value::Mapping(_) => (
                    build
                        .get("context")
                        .and_then(scalar)
                        .unwrap_or_else(|| ".".to_owned()),
                    build.get("dockerfile").and_then(scalar),
                ),
                other => (scalar(other).unwrap_or_default(), None),
            };
            if !stack.root.join(&context).is_dir() {
                problems.push(format!(
                    "service `{name}`: build context `{context}` is not a directory"
                ));
            }
            let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".to_owned());
            if !stack.root.join(&context).join(&dockerfile).is_file() {
                problems.push(format!(
                    "service `{name}`: Dockerfile `{dockerfile}` (in context `{context}`) does not exist"
                ));
            }
        }
        for env_file in strings(service.get("env_file")) {
            if !exists(&env_file) {
                problems.push(format!(
                    "service `{name}`: env_file `{env_file}` does not exist"
                ));
            }
        }
    }
    for (key, value) in stack
        .compose
        .get("secrets")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if let Some(file) = value.get("file").and_then(scalar) {
            if !exists(&file) {
                problems.push(format!(
                    "secret `{}`: file `{file}` does not exist",
                    key.as_str().unwrap_or_default()
                ));
            }
        }
    }
    problems
}

/// Every secret a service lists is declared at the top level, every declared secret is used,
/// its `environment:` variable is set in `.env`, and every secret file a service reads
/// (`*_FILE` variables, Grafana's `$__file{}`) is delivered to it: as a Compose secret of its
/// own, or by `secret-init` into the volume the service mounts at /run/secrets.
fn check_secrets(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let declared: BTreeMap<String, &Value> = stack
        .compose
        .get("secrets")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
                .collect()
        })
        .unwrap_or_default();
    let mut used = BTreeSet::new();
    let secret_names = |service: &Value| -> Vec<String> {
        service
            .get("secrets")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|s| scalar(s).or_else(|| s.get("source").and_then(scalar)))
            .collect()
    };
    for (name, service) in stack.services() {
        for secret in secret_names(service) {
            if !declared.contains_key(&secret) {
                problems.push(format!(
                    "service `{name}`: secret `{secret}` is not declared under top-level `secrets:`"
                ));
            }
            used.insert(secret);
        }
    }
    for (secret, spec) in &declared {
        if !used.contains(secret) {
            problems.push(format!(
                "secret `{secret}` is declared but no service uses it"
            ));
        }
        if let Some(variable) = spec.get("environment").and_then(scalar) {
            if stack.env.get(&variable).is_none_or(String::is_empty) {
                problems.push(format!(
                    "secret `{secret}`: its variable `{variable}` is not set in {ENV_FILE}"
                ));
            }
        }
    }

    // What secret-init copies where: (secret, directory inside secret-init).
    let copies: Vec<(String, String)> = stack
        .compose
        .get("services")
        .and_then(|s| s.get("secret-init"))
        .map(|init| {
            strings(init.get("command"))
                .iter()
                .flat_map(|script| script.lines().map(str::to_owned).collect::<Vec<_>>())
                .filter_map(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let source = words.iter().find_map(|w| w.strip_prefix("/run/secrets/"))?;
                    let target = words.last()?.trim_end_matches('/');
                    (words.first() == Some(&"cp")).then(|| (source.to_owned(), target.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let init_mounts: BTreeMap<String, String> = stack
        .compose
        .get("services")
        .and_then(|s| s.get("secret-init"))
        .map(|init| volume_mounts(init).into_iter().collect())
        .unwrap_or_default();

    // Every secret file a service reads.
    let mut reads: Vec<(String, String, String)> = Vec::new(); // (service, secret, where)
    for (name, service) in stack.services() {
        for (key, value) in raw_environment(service) {
            if key.ends_with("_FILE") {
                if let Some(secret) = value.strip_prefix("/run/secrets/") {
                    reads.push((name.clone(), secret.to_owned(), format!("`{key}`")));
                }
            }
        }
    }
    for (file, service) in GRAFANA_SECRET_READERS {
        let text = std::fs::read_to_string(stack.root.join(file)).unwrap_or_default();
        for after in text.split("$__file{").skip(1) {
            let path = after.split('}').next().unwrap_or_default();
            if let Some(secret) = path.strip_prefix("/run/secrets/") {
                reads.push((service.to_owned(), secret.to_owned(), file.to_owned()));
            }
        }
    }
    for (name, secret, reader) in reads {
        let service = stack.service(&name);
        let own = secret_names(service).contains(&secret);
        let via_init = volume_mounts(service)
            .into_iter()
            .filter(|(_, path)| path == "/run/secrets")
            .any(|(volume, _)| {
                let directory = init_mounts.get(&volume);
                let init_has_it = stack
                    .compose
                    .get("services")
                    .and_then(|s| s.get("secret-init"))
                    .is_some_and(|init| secret_names(init).contains(&secret));
                init_has_it
                    && copies
                        .iter()
                        .any(|(s, dir)| *s == secret && Some(dir) == directory)
            });
        if !own && !via_init {
            problems.push(format!(
                "service `{name}`: {reader} reads /run/secrets/{secret}, which reaches it neither as its own secret nor through secret-init"
            ));
        }
    }
    problems
}

/// A service's named-volume mounts: (volume, container path), short syntax and long.
fn volume_mounts(service: &Value) -> Vec<(String, String)> {
    service
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|volume| match volume {
            Value::Mapping(_) => Some((
                volume.get("source").and_then(scalar)?,
                volume.get("target").and_then(scalar)?,
            )),
            other => {
                let spec = scalar(other)?;
                let mut parts = spec.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                Some((source.to_owned(), target.to_owned()))
            }
        })
        .collect()
}

/// Every variable the compose file uses is defined (and not empty) in `.env`, and every
/// variable of `.env` is used (substituted, or the source of a secret): no dead knobs.
fn check_variables(stack: &Stack) -> Vec<String> {
    let mut problems = Vec::new();
    let mut values = Vec::new();
    string_values(&stack.compose, "", &mut values);
    let mut used = BTreeSet::new();
    for (path, text) in values {
        match interpolate(text, &stack.env) {
            Ok(interpolated) => {
                for variable in interpolated.variables {
                    match stack.env.get(&variable) {
                        None => problems.push(format!(
                            "`{path}` uses `${variable}`, which {ENV_FILE} does not define"
                        )),
                        Some(value) if value.is_empty() => problems.push(format!(
                            "`{path}` uses `${variable}`, which is empty in {ENV_FILE}"
                        )),
                        Some(_) => {}
                    }
                    used.insert(variable);
                }
            }
            Err(e) => problems.push(format!("`{path}`: {e}")),
        }
    }
    for secret in stack
        .compose
        .get("secrets")
        .and_then(Value::as_mapping)
        .into_iter()
        .flat_map(|m| m.values())
    {
        if let Some(variable) = secret.get("environment").and_then(scalar) {
            used.insert(variable);
        }
    }
    for variable in stack.env.keys() {
        if !used.contains(variable) {
            problems.push(format!(
                "{ENV_FILE} defines `{variable}`, which {COMPOSE_FILE} never uses"
            ));
        }
    }
    problems
}

/// The ingestor's `stop_grace_period` outlasts its drain plus one connection attempt, so
/// `docker compose stop` never SIGKILLs a batch that is still committing.
fn check_stop_grace(stack: &Stack) -> Vec<String> {
    let service = stack.service("ingestor");
    let grace = service
        .get("stop_grace_period")
        .and_then(scalar)
        .map(|g| stack.interpolate(&g));
    let Some(grace_ms) = grace.as_deref().and_then(duration_ms) else {
        return vec![format!(
            "service `ingestor`: `stop_grace_period` missing or not a duration ({grace:?}); Docker's 10 s default equals the default drain"
        )];
    };
    let drain_ms = stack
        .environment("ingestor")
        .get("INGESTOR_DRAIN_TIMEOUT_MS")
        .map_or(Ok(INGESTOR_DEFAULT_DRAIN_TIMEOUT_MS), |v| v.parse::<f64>());
    match drain_ms {
        Ok(drain_ms) if grace_ms > drain_ms + INGESTOR_CONNECT_TIMEOUT_MS => Vec::new(),
        Ok(drain_ms) => vec![format!(
            "service `ingestor`: `stop_grace_period` ({grace_ms} ms) must exceed INGESTOR_DRAIN_TIMEOUT_MS ({drain_ms} ms) + connect_timeout_ms ({INGESTOR_CONNECT_TIMEOUT_MS} ms)"
        )],
        Err(e) => vec![format!(
            "service `ingestor`: INGESTOR_DRAIN_TIMEOUT_MS is not a number: {e}"
        )],
    }
}

/// The compose services built from our Dockerfile: (service, target stage).
fn our_images(stack: &Stack) -> Vec<(String, String)> {
    stack
        .services()
        .into_iter()
        .filter_map(|(name, service)| {
            let build = service.get("build")?;
            let dockerfile = build.get("dockerfile").and_then(scalar)?;
            let context = build.get("context").and_then(scalar).unwrap_or_default();
            let path = Path::new(&context).join(dockerfile);
            let normal = |p: &Path| -> Vec<PathBuf> {
                p.components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .map(|c| PathBuf::from(c.as_os_str()))
                    .collect()
            };
            (normal(&path) == normal(Path::new(DOCKERFILE))).then(|| {
                let target = build.get("target").and_then(scalar).unwrap_or_default();
                (name, target)
            })
        })
        .collect()
}

/// Stages referenced by `COPY --from` exist (and come earlier); every compose `build.target`
/// is a stage; each target runs as a non-root `USER`, has `STOPSIGNAL SIGTERM` and an
/// exec-form `ENTRYPOINT` naming a file the image copied in.
fn check_dockerfile(stack: &Stack) -> Vec<String> {
    let stages = match parse_dockerfile(&stack.dockerfile) {
        Ok(stages) => stages,
        Err(e) => return vec![format!("{DOCKERFILE}: {e}")],
    };
    let mut problems = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        for instruction in stage.instructions.iter().filter(|i| i.keyword == "COPY") {
            if let Some(from) = copy_from(&instruction.args) {
                if !stages[..index].iter().any(|s| s.name == from) {
                    problems.push(format!(
                        "{DOCKERFILE}: stage `{}` copies --from=`{from}`, which is no earlier stage",
                        stage.name
                    ));
                }
            }
        }
    }
    let targets = our_images(stack);
    if targets.is_empty() {
        problems.push(format!(
            "no service of {COMPOSE_FILE} is built from {DOCKERFILE}"
        ));
    }
    for (service, target) in targets {
        if !stages.iter().any(|s| s.name == target) {
            problems.push(format!(
                "service `{service}`: build target `{target}` is not a stage of {DOCKERFILE}"
            ));
            continue;
        }
        let config = image_config(&stage_chain(&stages, &target));
        let user = config.user.unwrap_or_default();
        let user_name = user.split(':').next().unwrap_or_default();
        if user_name.is_empty() || user_name == "root" || user_name == "0" {
            problems.push(format!(
                "{DOCKERFILE}: stage `{target}` runs as root (`USER` missing or root)"
            ));
        }
        if config.stop_signal.as_deref() != Some("SIGTERM") {
            problems.push(format!(
                "{DOCKERFILE}: stage `{target}` has no `STOPSIGNAL SIGTERM`"
            ));
        }
        match config.entrypoint.as_deref().map(exec_form) {
            Some(Some(entrypoint)) if !entrypoint.is_empty() => {
                if !config.copied_to.contains(&entrypoint[0]) {
                    problems.push(format!(
                        "{DOCKERFILE}: stage `{target}`: ENTRYPOINT `{}` is not a file the stage copies in",
                        entrypoint[0]
                    ));
                }
            }
            Some(_) => problems.push(format!(
                "{DOCKERFILE}: stage `{target}`: ENTRYPOINT is not in exec form (a shell would swallow SIGTERM)"
            )),
            None => problems.push(format!("{DOCKERFILE}: stage `{target}` has no ENTRYPOINT")),
        }
    }
    problems
}

/// Exactly one `cargo build --release --locked -p ...` line (what `.ci/run` runs), listing the
/// package of every binary a stage copies from the build stage; `cargo chef cook` prepares the
/// same packages. `binaries` maps each workspace binary to its package.
fn check_build_command(stack: &Stack, binaries: &BTreeMap<String, String>) -> Vec<String> {
    let stages = match parse_dockerfile(&stack.dockerfile) {
        Ok(stages) => stages,
        Err(e) => return vec![format!("{DOCKERFILE}: {e}")],
    };
    let commands = build_commands(&stack.dockerfile);
    let [packages] = commands.as_slice() else {
        return vec![format!(
            "{DOCKERFILE}: expected exactly one line with `{BUILD_COMMAND} -p <package>...` (.ci/run runs it), found {}",
            commands.len()
        )];
    };
    let mut problems = Vec::new();
    let Some(build_stage) = stages.iter().find(|s| {
        s.instructions
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains(BUILD_COMMAND))
    }) else {
        return vec![format!("{DOCKERFILE}: the build command is not in a RUN")];
    };
    let copied: Vec<String> = stages
        .iter()
        .flat_map(|s| &s.instructions)
        .filter(|i| i.keyword == "COPY" && copy_from(&i.args) == Some(build_stage.name.as_str()))
        .filter_map(|i| {
            let words: Vec<&str> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let source = words.first()?;
            Some(source.rsplit('/').next()?.to_owned())
        })
        .collect();
    if copied.is_empty() {
        problems.push(format!(
            "{DOCKERFILE}: no stage copies a binary from stage `{}`",
            build_stage.name
        ));
    }
    for binary in copied {
        match binaries.get(&binary) {
            Some(package) if packages.contains(package) => {}
            Some(package) => problems.push(format!(
                "{DOCKERFILE}: binary `{binary}` is copied, but `{BUILD_COMMAND}` lacks `-p {package}`"
            )),
            None => problems.push(format!(
                "{DOCKERFILE}: binary `{binary}` is copied, but no workspace package builds it"
            )),
        }
    }
    for instruction in &build_stage.instructions {
        if let Some(at) = instruction.args.find("cargo chef cook") {
            let words: Vec<&str> = instruction.args[at..].split_whitespace().collect();
            let cooked: Vec<String> = words
                .windows(2)
                .filter(|pair| pair[0] == "-p")
                .map(|pair| pair[1].to_owned())
                .collect();
            if cooked != *packages {
                problems.push(format!(
                    "{DOCKERFILE}: `cargo chef cook` prepares {cooked:?} but the build compiles {packages:?}; the dependency layer would not cover the build"
                ));
            }
        }
    }
    problems
}

/// The two ignore files are equal, start by excluding everything, and let back in only paths
/// that exist and are neither build output nor data, .git or .env.
fn check_dockerignore(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let texts: Vec<String> = DOCKERIGNORE_FILES
        .iter()
        .map(|f| std::fs::read_to_string(root.join(f)).unwrap_or_default())
        .collect();
    if texts[0] != texts[1] {
        problems.push(format!(
            "{} and {} differ (BuildKit reads the first, the classic builder the second)",
            DOCKERIGNORE_FILES[0], DOCKERIGNORE_FILES[1]
        ));
    }
    let patterns: Vec<&str> = texts[0]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if patterns.first() != Some(&"*") {
        problems.push(format!(
            "{}: should start with `*` and let back in only what the build needs",
            DOCKERIGNORE_FILES[0]
        ));
    }
    for included in patterns.iter().filter_map(|p| p.strip_prefix('!')) {
        let path = included.trim_start_matches('/').trim_end_matches('/');
        if !root.join(path).exists() {
            problems.push(format!(
                "{}: `!{included}` names a path that does not exist",
                DOCKERIGNORE_FILES[0]
            ));
        }
        for forbidden in ["target", "bench", "data", ".git", ".env"] {
            if path == forbidden || path.starts_with(&format!("{forbidden}/")) {
                problems.push(format!(
                    "{}: `!{included}` lets `{forbidden}` into the build context",
                    DOCKERIGNORE_FILES[0]
                ));
            }
        }
    }
    problems
}

/// Fails with the problems, one per line.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

/// Fails unless some problem contains `needle`.
fn assert_reported(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Every binary target of the workspace and its package, from `cargo metadata`.
fn workspace_binaries() -> BTreeMap<String, String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cannot run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut binaries = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
            if is_bin {
                binaries.insert(
                    target["name"].as_str().unwrap().to_owned(),
                    package["name"].as_str().unwrap().to_owned(),
                );
            }
        }
    }
    binaries
}

/// The built binary `name` of this build (`target/<profile>/<name>`, next to this test's
/// `deps/` directory). `cargo test --workspace` builds the services' binaries because their
/// packages have integration tests.
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: build it first (`cargo build -p {name}`; `scripts/test` does, \
         through `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Runs a health check's command (after `CMD`) with `env`, as Docker would inside the
/// container, and says whether it passed within the compose file's 3 s timeout (plus slack).
fn health_check_passes(test: &[String], env: &BTreeMap<String, String>) -> bool {
    let (program, args) = test.split_first().expect("an empty health check");
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the health check {test:?}: {e}"));
    ChildGuard::new(child)
        .wait_with_timeout(Duration::from_secs(5))
        .is_some_and(|status| status.success())
}

// ---------------------------------------------------------------------------------------------
// Tests of the real files
// ---------------------------------------------------------------------------------------------

#[test]
fn compose_file_parses_without_a_version_key_and_with_known_top_level_keys() {
    let stack = Stack::load();
    assert_no_problems("structure of docker-compose.yml", &check_structure(&stack));
}

#[test]
fn every_service_is_hardened_or_has_a_documented_exemption() {
    let stack = Stack::load();
    assert_no_problems("hardening", &check_hardening(&stack));
}

#[test]
fn only_grafana_and_pgadmin_publish_ports_and_only_on_localhost() {
    let stack = Stack::load();
    assert_no_problems("ports and container names", &check_ports(&stack));
    let ingestor = stack.service("ingestor");
    assert!(ingestor.get("ports").is_none() && ingestor.get("container_name").is_none());
}

#[test]
fn depends_on_waits_for_health_or_completion() {
    let stack = Stack::load();
    assert_no_problems("depends_on", &check_dependencies(&stack));
}

#[test]
fn every_image_is_pinned_to_a_tag() {
    let stack = Stack::load();
    assert_no_problems("images", &check_images(&stack));
}

#[test]
fn bind_mounts_build_contexts_and_named_volumes_exist() {
    let stack = Stack::load();
    assert_no_problems("paths", &check_paths(&stack));
}

#[test]
fn secrets_are_declared_set_in_env_and_delivered_to_every_reader() {
    let stack = Stack::load();
    assert_no_problems("secrets", &check_secrets(&stack));
}

#[test]
fn every_compose_variable_is_in_env_and_every_env_variable_is_used() {
    let (_, problems) =
        parse_env(&std::fs::read_to_string(workspace_root().join(ENV_FILE)).unwrap());
    assert_no_problems(".env syntax", &problems);
    let stack = Stack::load();
    assert_no_problems("variables", &check_variables(&stack));
}

#[test]
fn ingestor_stop_grace_period_outlasts_its_drain() {
    let stack = Stack::load();
    assert_no_problems("stop_grace_period", &check_stop_grace(&stack));
}

#[test]
fn dockerfile_stages_user_signal_and_entrypoints_are_right() {
    let stack = Stack::load();
    assert_no_problems("Dockerfile", &check_dockerfile(&stack));
}

#[test]
fn dockerfile_build_command_builds_every_binary_the_images_copy() {
    let stack = Stack::load();
    let binaries = workspace_binaries();
    assert_no_problems(
        "Dockerfile build command",
        &check_build_command(&stack, &binaries),
    );
}

#[test]
fn dockerignore_files_are_equal_and_keep_build_output_and_data_out() {
    assert_no_problems(".dockerignore", &check_dockerignore(&workspace_root()));
}

#[test]
fn every_command_of_our_images_exists_in_the_built_binaries() {
    // Arrange
    let stack = Stack::load();
    let stages = parse_dockerfile(&stack.dockerfile).unwrap();
    let binaries = workspace_binaries();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new(); // (what, argv)
    for (service, target) in our_images(&stack) {
        let config = image_config(&stage_chain(&stages, &target));
        let entrypoint = config
            .entrypoint
            .as_deref()
            .and_then(exec_form)
            .unwrap_or_default();
        let arguments = match stack.service(&service).get("command") {
            Some(command) => strings(Some(command)),
            None => config
                .cmd
                .as_deref()
                .and_then(exec_form)
                .unwrap_or_default(),
        };
        let argv: Vec<String> = entrypoint.into_iter().chain(arguments).collect();
        commands.push((format!("service `{service}`: entry command"), argv));
        if let Some(test) = healthcheck_test(stack.service(&service)) {
            let is_ours = test.first().map(String::as_str) == Some("CMD")
                && test
                    .get(1)
                    .and_then(|p| Path::new(p).file_name())
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| binaries.contains_key(f));
            if is_ours {
                commands.push((
                    format!("service `{service}`: health check"),
                    test[1..].to_vec(),
                ));
            } else {
                assert!(
                    LIVE_CHECKED_HEALTHCHECKS.contains(&service.as_str()),
                    "service `{service}`: the health check {test:?} is not one of our binaries' \
                     commands, and no test runs it"
                );
            }
        }
    }
    assert!(commands.len() >= 3, "too few commands found: {commands:?}");

    for (what, argv) in commands {
        // Act: `<binary> <subcommand...> --help` parses only if the subcommand exists.
        let name = Path::new(&argv[0]).file_name().unwrap().to_str().unwrap();
        let binary = built_binary(name);
        let output = Command::new(&binary)
            .args(argv[1..].iter().map(|a| stack.interpolate(a)))
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();

        // Assert
        assert!(
            output.status.success(),
            "{what}: `{} --help` failed ({}): {}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn generator_health_check_passes_against_a_running_generator_and_fails_without_one() {
    // Arrange: the generator's compose environment, with a private directory and port.
    let stack = Stack::load();
    let test = healthcheck_test(stack.service("generator")).expect("generator health check");
    assert_eq!(
        test[0], "CMD",
        "expected an exec-form health check: {test:?}"
    );
    let mut test: Vec<String> = test[1..].iter().map(|a| stack.interpolate(a)).collect();
    // The image's binary is the workspace's built one.
    if Path::new(&test[0]).file_name() == Some(std::ffi::OsStr::new("generator")) {
        test[0] = built_binary("generator").display().to_string();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut env = stack.environment("generator");
    env.insert(
        "GENERATOR_OUT".into(),
        dir.path().join("incoming").display().to_string(),
    );
    env.insert("GENERATOR_FILES".into(), "0".into());
    env.insert(
        "GENERATOR_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );

    // Act + Assert: nothing listens yet, so the check must fail.
    assert!(
        !health_check_passes(&test, &env),
        "the health check passed with no generator running: it checks nothing"
    );

    // Act: start the generator with the same environment (this also proves that it accepts
    // every GENERATOR_* value of .env).
    let log_path = dir.path().join("generator.log");
    let mut generator = ChildGuard::new(
        Command::new(built_binary("generator"))
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );

    // Assert: the check passes once the generator serves HTTP.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = generator.child_mut().try_wait() {
            panic!(
                "the generator exited ({status}) with the compose environment: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if health_check_passes(&test, &env) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the health check never passed: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ingestor_accepts_the_compose_environment() {
    // Arrange: the ingestor's compose environment, with local paths for the container's.
    let stack = Stack::load();
    let test = healthcheck_test(stack.service("ingestor")).expect("ingestor health check");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let mut env = stack.environment("ingestor");
    env.insert(
        "INGESTOR_INPUT_DIR".into(),
        dir.path().display().to_string(),
    );
    env.insert(
        "INGESTOR_DATABASE_PASSWORD_FILE".into(),
        password.display().to_string(),
    );
    env.insert(
        "INGESTOR_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );

    // Act: the health check loads every setting, then finds no ingestor on that port.
    let name = Path::new(&test[1]).file_name().unwrap();
    let output = Command::new(built_binary(name.to_str().unwrap()))
        .args(&test[2..])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();

    // Assert: exit 1 (not ready), not 2 (settings rejected).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected `not ready` (1); exit 2 means the settings were rejected: {stderr}"
    );
    assert!(
        stderr.contains("cannot reach"),
        "unexpected output: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks catch what they claim to catch
// ---------------------------------------------------------------------------------------------

#[test]
fn the_checks_report_a_broken_copy_of_every_file() {
    // Arrange: broken copies of the real texts.
    let root = workspace_root();
    let compose = std::fs::read_to_string(root.join(COMPOSE_FILE)).unwrap();
    let env = std::fs::read_to_string(root.join(ENV_FILE)).unwrap();
    let dockerfile = std::fs::read_to_string(root.join(DOCKERFILE)).unwrap();
    let replace = |text: &str, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "the real file no longer contains {from:?}"
        );
        text.replacen(from, to, 1)
    };
    let broken_compose = [
        ("./sql:/sql:ro", "./does-not-exist:/sql:ro"),
        ("POSTGRES_DB: ${POSTGRES_DB}", "POSTGRES_DB: ${NOPE}"),
        (
            "\"127.0.0.1:${GRAFANA_HOST_PORT}:3000\"",
            "\"${GRAFANA_HOST_PORT}:3000\"",
        ),
        (
            "name: event-ingest\n",
            "version: \"3.9\"\nname: event-ingest\n",
        ),
        (
            "INGESTOR_DATABASE_PASSWORD_FILE: /run/secrets/ingestor_db_password",
            "INGESTOR_DATABASE_PASSWORD_FILE: /run/secrets/nope",
        ),
        ("image: grafana/grafana:11.3.0", "image: grafana/grafana"),
    ]
    .iter()
    .fold(compose.clone(), |text, (from, to)| replace(&text, from, to));
    let broken_env = replace(
        &env,
        "POSTGRES_DB=events\n",
        "POSTGRES_DB=events\nDEAD_KNOB=1\n",
    );
    let broken_dockerfile = [
        (
            "COPY --from=build /out/generator",
            "COPY --from=builder /out/generator",
        ),
        ("USER 10001:10001\n", ""),
        (
            "RUN cargo build --release --locked -p generator -p ingestor",
            "RUN cargo build --release --locked -p generator",
        ),
    ]
    .iter()
    .fold(dockerfile.clone(), |text, (from, to)| {
        replace(&text, from, to)
    });
    let broken = Stack::from_texts(&root, &broken_compose, &broken_env, &broken_dockerfile);

    // A structural break that is easier to make in the parsed form.
    let mut structural = Stack::from_texts(&root, &compose, &env, &dockerfile);
    let services = structural.compose.get_mut("services").unwrap();
    let ingestor = services
        .get_mut("ingestor")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    ingestor.insert("read_only".into(), false.into());
    ingestor.insert("container_name".into(), "ingestor".into());
    ingestor.insert("cap_drop".into(), Value::Sequence(Vec::new()));
    ingestor.remove("mem_limit");
    ingestor.insert("stop_grace_period".into(), "10s".into());
    let healthcheck = ingestor
        .get_mut("healthcheck")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    healthcheck.insert(
        "test".into(),
        serde_yaml::from_str("[CMD, curl, -f, http://127.0.0.1:9100/readyz]").unwrap(),
    );
    let pgadmin = services
        .get_mut("pgadmin")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    pgadmin.insert("read_only".into(), true.into());
    let grafana = services.get_mut("grafana").unwrap();
    let depends = grafana
        .get_mut("depends_on")
        .unwrap()
        .get_mut("postgres")
        .unwrap();
    depends
        .as_mapping_mut()
        .unwrap()
        .insert("condition".into(), "service_started".into());

    // Act + Assert: every break is reported, naming what is at fault.
    assert_reported(&check_paths(&broken), "`./does-not-exist` does not exist");
    assert_reported(&check_variables(&broken), "`$NOPE`");
    assert_reported(&check_variables(&broken), "`DEAD_KNOB`");
    assert_reported(&check_ports(&broken), "service `grafana`: port");
    assert_reported(&check_structure(&broken), "`version:`");
    assert_reported(&check_secrets(&broken), "reads /run/secrets/nope");
    assert_reported(&check_images(&broken), "`grafana/grafana` is not pinned");
    assert_reported(&check_dockerfile(&broken), "--from=`builder`");
    assert_reported(&check_dockerfile(&broken), "runs as root");
    assert_reported(
        &check_build_command(&broken, &workspace_binaries()),
        "lacks `-p ingestor`",
    );
    let hardening = check_hardening(&structural);
    assert_reported(
        &hardening,
        "service `ingestor`: `read_only: true` is missing",
    );
    assert_reported(
        &hardening,
        "service `ingestor`: `cap_drop: [ALL]` is missing",
    );
    assert_reported(&hardening, "service `ingestor`: no memory limit");
    assert_reported(&hardening, "service `ingestor`: the health check uses curl");
    assert_reported(
        &hardening,
        "service `pgadmin`: read-only now, so drop its exemption",
    );
    assert_reported(
        &check_ports(&structural),
        "service `ingestor`: `container_name`",
    );
    assert_reported(
        &check_dependencies(&structural),
        "service `grafana`: depends_on `postgres` with `service_started`",
    );
    assert_reported(&check_stop_grace(&structural), "must exceed");
}

#[test]
fn interpolation_follows_compose_rules() {
    let env: Env = [
        ("A".to_owned(), "1".to_owned()),
        ("E".to_owned(), String::new()),
    ]
    .into_iter()
    .collect();
    let value = |text: &str| interpolate(text, &env).unwrap().value;
    assert_eq!(value("x${A}y$A"), "x1y1");
    assert_eq!(value("$${A} $$A"), "${A} $A");
    assert_eq!(value("${E:-d} ${E-d} ${U:-d} ${U-d}"), "d  d d");
    assert_eq!(value("${A:+alt}${E:+alt}${E+set}"), "altset");
    assert_eq!(
        interpolate("${A} ${U:-x} $B", &env).unwrap().variables,
        ["A", "U", "B"]
    );
    assert!(
        interpolate("cost: 5$", &env).is_err(),
        "a lone `$` is an error"
    );
    assert!(interpolate("${A", &env).is_err());
    assert_eq!(duration_ms("1m30s"), Some(90_000.0));
    assert_eq!(duration_ms("250ms"), Some(250.0));
    assert_eq!(duration_ms("30"), None);
    assert!(image_is_pinned("postgres:17-bookworm"));
    assert!(image_is_pinned("localhost:5000/app@sha256:abc"));
    assert!(!image_is_pinned("localhost:5000/app"));
    assert!(!image_is_pinned("grafana/grafana:latest"));
}
