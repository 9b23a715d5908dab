//! A PostgreSQL server of the test's own, which the test may stop and start at will (the shared
//! server on 5432 must never be stopped: other tests run against it).
//!
//! The cluster lives in a temporary directory (data, Unix socket and server log) with trust
//! authentication on 127.0.0.1 and a free port. PostgreSQL refuses to run as root, so when the
//! tests run as root every server command runs as the `postgres` OS user via `runuser`, and the
//! directory is handed to that user. [`PrivatePostgres`] is a guard: dropping it, also while a
//! test panics, stops the server (`immediate`) and removes the directory.

use stack_tests::free_port;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The OS user that owns the cluster when the tests run as root.
const OS_USER: &str = "postgres";
/// How long `pg_ctl` may wait for a start or a stop.
const PG_CTL_WAIT: Duration = Duration::from_secs(30);

/// How `pg_ctl stop` shuts the server down.
#[derive(Clone, Copy, Debug)]
pub enum StopMode {
    /// Sessions are terminated and their transactions rolled back; a clean shutdown.
    Fast,
    /// Every process is killed at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A private PostgreSQL cluster; stopped and deleted when dropped.
pub struct PrivatePostgres {
    /// The server's binaries (`initdb`, `pg_ctl`), the highest installed version.
    bin: PathBuf,
    /// Holds `data/`, the socket and `server.log`; deleted on drop.
    root: tempfile::TempDir,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// Whether the server was started and not stopped since.
    running: bool,
    /// Run server commands through `runuser -u postgres` (the tests run as root).
    as_postgres: bool,
    /// Server options added to every start (`-c ssl=on` for a TLS server).
    extra_options: String,
}

impl PrivatePostgres {
    /// Creates a cluster with `initdb` and starts it.
    ///
    /// # Panics
    /// When no PostgreSQL server binaries are installed, or `initdb` or the start fail.
    pub fn start() -> PrivatePostgres {
        let mut server = PrivatePostgres::init();
        server.start_again();
        server
    }

    /// Creates a cluster that offers TLS with the given PEM certificate (chain) and key, and
    /// starts it.
    ///
    /// # Panics
    /// As [`start`](Self::start), or when the files cannot be written.
    pub fn start_with_tls(certificate_pem: &str, key_pem: &str) -> PrivatePostgres {
        let mut server = PrivatePostgres::init();
        let data = server.data_dir();
        for (name, content) in [("server.crt", certificate_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, content).unwrap();
            // PostgreSQL refuses a key others may read, and runs as the postgres user.
            run_checked(Command::new("chmod").arg("600").arg(&path));
            if server.as_postgres {
                run_checked(Command::new("chown").arg(OS_USER).arg(&path));
            }
        }
        server.extra_options = " -c ssl=on".into();
        server.start_again();
        server
    }

    /// Creates the cluster (`initdb`), not started.
    fn init() -> PrivatePostgres {
        let bin = server_bin_dir();
        let root = tempfile::Builder::new()
            .prefix("ingestor-pg-")
            .tempdir()
            .unwrap();
        let as_postgres = running_as_root();
        if as_postgres {
            run_checked(Command::new("chown").arg(OS_USER).arg(root.path()));
        }
        let server = PrivatePostgres {
            bin,
            root,
            port: free_port(),
            running: false,
            as_postgres,
            extra_options: String::new(),
        };
        let data = server.data_dir();
        server.pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
                "--locale=C".as_ref(),
                "--encoding=UTF8".as_ref(),
            ],
        );
        server
    }

    /// Starts the (stopped) server and returns once it accepts connections.
    pub fn start_again(&mut self) {
        let (data, log) = (self.data_dir(), self.root.path().join("server.log"));
        // Unix socket in our own directory: never collides with the system's /var/run/postgresql.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1{}",
            self.port,
            self.root.path().display(),
            self.extra_options
        );
        let wait = PG_CTL_WAIT.as_secs().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "start".as_ref(),
            ],
        );
        self.running = true;
    }

    /// Stops the server and returns once it is gone.
    pub fn stop(&mut self, mode: StopMode) {
        let data = self.data_dir();
        let wait = PG_CTL_WAIT.as_secs().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                mode.as_arg().as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                wait.as_ref(),
                "stop".as_ref(),
            ],
        );
        self.running = false;
    }

    /// A connection URL for `user` and database `dbname`.
    pub fn url(&self, user: &str, dbname: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Creates database `name` (`CREATE DATABASE name <options>`, e.g. an encoding) with the
    /// schema from `sql/`, as the superuser.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create_database(&self, name: &str, options: &str) {
        stack_tests::connect(&self.url("postgres", "postgres"))
            .await
            .unwrap()
            .batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .await
            .unwrap();
        let schema = stack_tests::connect(&self.url("postgres", name))
            .await
            .unwrap();
        stack_tests::apply_sql_scripts(&schema).await.unwrap();
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Runs a server program and panics with its output (and the server log) if it fails.
    fn pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let output = self.command(program, args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed with {}:\n{}{}\n--- server log ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
        );
        output
    }

    fn command(&self, program: &str, args: &[&std::ffi::OsStr]) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        // A directory the postgres user may enter (runuser keeps the caller's working directory).
        command.args(args).current_dir(self.root.path());
        command
    }
}

impl Drop for PrivatePostgres {
    /// Stops the server if it may be running (also after a start that failed half-way), then
    /// the temporary directory removes itself. Never panics: this runs during unwinding too.
    fn drop(&mut self) {
        if !self.data_dir().join("postmaster.pid").exists() {
            return;
        }
        let data = self.data_dir();
        let stopped = self
            .command(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            )
            .output();
        match stopped {
            Ok(output) if output.status.success() || !self.running => {}
            Ok(output) => eprintln!(
                "cannot stop the private PostgreSQL server: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("cannot stop the private PostgreSQL server: {e}"),
        }
    }
}

/// The `bin` directory of the highest PostgreSQL version under /usr/lib/postgresql.
///
/// # Panics
/// When there is none, naming what to install.
fn server_bin_dir() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(base).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|dir| dir.join("bin/pg_ctl").is_file() && dir.join("bin/initdb").is_file())
            .filter_map(|dir| {
                let version: u32 = dir.file_name()?.to_str()?.parse().ok()?;
                Some((version, dir.join("bin")))
            })
            .max()
    });
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under {}/<version>/bin; \
             these tests start a private server: install postgresql (e.g. apt-get install postgresql)",
            base.display()
        ),
    }
}

/// Whether this process runs as root (then PostgreSQL must run as another user).
fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn run_checked(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
