//! A PostgreSQL cluster of our own, run from the PostgreSQL binaries on the machine.
//!
//! DESIGN.md §5: with no `database.url`, `gateway serve` runs its own PostgreSQL under
//! `./var/postgres`, and tests do the same in a temporary directory. [`LocalCluster::ensure`]
//! creates the cluster when the directory has none (`initdb`), starts it when it is not running
//! (`pg_ctl start`) and reuses it when it is. When the gateway runs as root the binaries run as
//! the `postgres` system user (through `runuser`), since PostgreSQL refuses to run as root.
//!
//! The server listens on 127.0.0.1 only, with its Unix socket inside the data directory.
//! Every connection, TCP or socket, authenticates as the `postgres` superuser with a password
//! generated at `initdb` (SCRAM-SHA-256): being on this machine is not enough to read an audit
//! log full of personal data. The password is kept in [`PASSWORD_FILE`] in the data directory,
//! mode 0600, in libpq's pgpass format, so `PGPASSFILE=<dir>/pgpass psql -h 127.0.0.1 ...`
//! works. A cluster made by an earlier version with `trust` is given a password (and its
//! `pg_hba.conf` rewritten) the first time it is ensured.
//!
//! Why a password rather than a Unix socket with peer authentication: under root the server
//! runs as `postgres`, so peer authentication would need an ident map per operating-system user,
//! the socket path must fit 107 bytes (deep data directories fall back to TCP), and the
//! README's and operators' `psql -h 127.0.0.1` lines and URLs keep working with a password.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The programs a local cluster needs, all from one PostgreSQL installation.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Where Debian and Ubuntu put each PostgreSQL version's programs.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";
/// The superuser that `initdb` creates, and the system user the binaries run as under root.
const SUPERUSER: &str = "postgres";
/// The server log, inside the data directory.
const LOG_FILE: &str = "server.log";
/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_TIMEOUT_SECS: u32 = 60;
/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The superuser's password, in the data directory: one pgpass line (`*:*:*:postgres:<pw>`),
/// mode 0600, owned by the data directory's owner.
pub const PASSWORD_FILE: &str = "pgpass";
/// What `pg_hba.conf` says: every connection authenticates with a password (SCRAM-SHA-256).
const PG_HBA: &str = "\
# Written by local-postgres (crates/local-postgres): every connection, over the Unix socket in
# the data directory or TCP on the loopback address, authenticates with a password
# (SCRAM-SHA-256). The superuser's password is in the file `pgpass` beside this one.
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
";

/// Why a local cluster could not be found, created, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL installation has all of `initdb`, `pg_ctl` and `postgres`.
    #[error(
        "PostgreSQL binaries not found: looked for initdb, pg_ctl and postgres (all three in one \
         directory) on PATH and in {DEBIAN_LIB}/*/bin, and searched: {searched}. Install \
         PostgreSQL (Debian: `apt-get install postgresql`) or configure database.url"
    )]
    BinariesNotFound {
        /// The directories searched, `:`-separated.
        searched: String,
    },
    /// A command could not run or failed.
    #[error("{what}: {detail}")]
    Command {
        /// What was being done, with the command.
        what: String,
        /// Its exit status and output.
        detail: String,
    },
    /// The server did not start or does not accept connections.
    #[error("PostgreSQL in {dir} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// The data directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
        /// The server log.
        log: PathBuf,
        /// The log's last lines from this start.
        tail: String,
    },
    /// A file or directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The cluster's password is missing and cannot be set.
    #[error(
        "the PostgreSQL cluster in {} has no password file ({PASSWORD_FILE}) and does not trust \
         local connections, so its password cannot be learnt or set: {reason}. Put \
         `*:*:*:postgres:<password>` in {}/{PASSWORD_FILE} (mode 0600), or move the directory \
         away to start afresh",
        dir.display(),
        dir.display()
    )]
    NoPassword {
        /// The data directory.
        dir: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The `postgres` system user cannot reach the data directory (running as root).
    #[error(
        "the {SUPERUSER} system user cannot reach {}: PostgreSQL refuses to run as root, so \
         the cluster runs as {SUPERUSER}, which needs search (x) permission on every parent \
         directory{blocking}",
        dir.display()
    )]
    Unreachable {
        /// The data directory.
        dir: PathBuf,
        /// The parents that lack it, as a sentence.
        blocking: String,
    },
}

type Result<T> = std::result::Result<T, ClusterError>;

/// The superuser's password: never printed (`Debug` shows `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Password {
    /// 122 random bits (a v4 UUID from the operating system's generator), as 32 hex digits:
    /// nothing in them needs quoting in SQL, a URL or a pgpass line.
    fn generate() -> Password {
        Password(uuid::Uuid::new_v4().simple().to_string())
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClusterError + 'a {
    move |source| ClusterError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One PostgreSQL installation's `bin` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds `initdb`, `pg_ctl` and `postgres` in one directory: the first on `PATH` (after
    /// resolving symbolic links, so `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb`
    /// counts), else the highest version under `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgBinaries> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path_dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        Self::find_in(&path_dirs, Path::new(DEBIAN_LIB))
    }

    /// [`find`](Self::find) with the `PATH` directories and the Debian library given.
    pub fn find_in(path_dirs: &[PathBuf], debian_lib: &Path) -> Result<PgBinaries> {
        let mut searched = Vec::new();
        for dir in path_dirs {
            searched.push(dir.clone());
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            // The installation's own directory first (pg_ctl finds postgres beside itself).
            if let Some(real) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                if has_all_programs(&real) {
                    return Ok(PgBinaries { bin_dir: real });
                }
            }
            if has_all_programs(dir) {
                return Ok(PgBinaries {
                    bin_dir: dir.clone(),
                });
            }
        }
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(debian_lib)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
                Some((version?, entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        for (_, bin) in versions.iter().rev() {
            if has_all_programs(bin) {
                return Ok(PgBinaries {
                    bin_dir: bin.clone(),
                });
            }
        }
        searched.push(debian_lib.join("*/bin"));
        let searched = searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>();
        Err(ClusterError::BinariesNotFound {
            searched: searched.join(":"),
        })
    }

    /// The path of one of the programs.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_all_programs(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| is_executable(&dir.join(p)))
}

/// Whether this process runs as root (`id -u` says 0).
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

/// How a cluster is created and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The TCP port on 127.0.0.1 when the server is started here; `None` picks a free one. A
    /// server already running in the directory keeps its own port.
    pub port: Option<u16>,
    /// `fsync` on and a synced `initdb` (the default). Off only for throwaway test clusters,
    /// where it makes creating the cluster and each database several times faster.
    pub durable: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            port: None,
            durable: true,
        }
    }
}

/// A PostgreSQL cluster in a directory of ours, running on 127.0.0.1.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    port: u16,
    password: Password,
    binaries: PgBinaries,
    as_postgres: bool,
    started_here: bool,
    stop_on_drop: bool,
    temp_dir: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// The cluster in `dir`, created (`initdb`) if the directory has no `PG_VERSION` and
    /// started if it is not running; a server already running there is reused, on its own port.
    /// Waits until the server accepts connections. Dropping the result leaves the server running;
    /// see [`stop`](Self::stop) and [`set_stop_on_drop`](Self::set_stop_on_drop).
    pub fn ensure(dir: &Path, port: Option<u16>) -> Result<LocalCluster> {
        Self::ensure_with(
            dir,
            &ClusterOptions {
                port,
                ..ClusterOptions::default()
            },
        )
    }

    /// [`ensure`](Self::ensure) with every option.
    pub fn ensure_with(dir: &Path, options: &ClusterOptions) -> Result<LocalCluster> {
        let binaries = PgBinaries::find()?;
        let as_postgres = running_as_root();
        fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        let dir = fs::canonicalize(dir).map_err(io_err("cannot resolve", dir))?;
        let mut cluster = LocalCluster {
            dir,
            port: 0,
            password: Password(String::new()),
            binaries,
            as_postgres,
            started_here: false,
            stop_on_drop: false,
            temp_dir: None,
        };
        // Two processes ensuring the same directory (test processes sharing one cluster) take
        // turns: the second finds the cluster the first created and started.
        let lock_file =
            fs::File::open(&cluster.dir).map_err(io_err("cannot open", &cluster.dir))?;
        let mut lock = fd_lock::RwLock::new(lock_file);
        let _held = lock.write().map_err(io_err("cannot lock", &cluster.dir))?;
        if as_postgres {
            hand_to_postgres(&cluster.dir)?;
        }
        cluster.init_if_needed(options)?;
        let legacy = match cluster.read_password()? {
            Some(password) => {
                cluster.password = password;
                false
            }
            None => true,
        };
        let mut cluster = cluster.start_if_needed(options)?;
        if legacy || hba_trusts(&cluster.read_hba()?) {
            cluster.secure(legacy)?;
        }
        Ok(cluster)
    }

    /// A new cluster in a new temporary directory, not durable (see [`ClusterOptions`]), stopped
    /// and removed when dropped.
    pub fn temporary() -> Result<LocalCluster> {
        let temp = tempfile::Builder::new()
            .prefix("gateway-pg-")
            .tempdir()
            .map_err(io_err(
                "cannot create a directory in",
                &std::env::temp_dir(),
            ))?;
        let mut cluster = Self::ensure_with(
            temp.path(),
            &ClusterOptions {
                port: None,
                durable: false,
            },
        )?;
        cluster.temp_dir = Some(temp);
        cluster.stop_on_drop = true;
        Ok(cluster)
    }

    /// A connection URL for database `db` as the `postgres` superuser, password included: a
    /// secret (for a child process's environment, say), not for logs.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            self.password.0, self.port
        )
    }

    /// Options for connecting to database `db` as the `postgres` superuser (password included;
    /// their `Debug` does not show it).
    pub fn connect_options(&self, db: &str) -> sqlx::postgres::PgConnectOptions {
        connect_options(self.port, &self.password, db)
    }

    /// The superuser's password file (pgpass format, mode 0600): `PGPASSFILE=<this> psql -h
    /// 127.0.0.1 -p <port> -U postgres <db>` connects without a prompt.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join(PASSWORD_FILE)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// The PostgreSQL installation in use.
    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// Whether [`ensure`](Self::ensure) started the server (rather than finding it running).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Whether dropping this value stops the server (true for [`temporary`](Self::temporary)).
    pub fn set_stop_on_drop(&mut self, stop: bool) {
        self.stop_on_drop = stop;
    }

    /// Stops the server (`pg_ctl stop -m fast`): clients are disconnected, and the data is
    /// written out. Succeeds when the server is not running.
    pub fn stop(&self) -> Result<()> {
        self.stop_mode("fast")
    }

    fn stop_mode(&self, mode: &str) -> Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", mode, "-w"]);
        cmd.arg(format!("--timeout={PG_CTL_TIMEOUT_SECS}"));
        let out = run(&mut cmd, "pg_ctl stop")?;
        if out.status.success() || !self.is_running()? {
            Ok(())
        } else {
            Err(command_failed("pg_ctl stop", &cmd, &out))
        }
    }

    /// Spawns a watchdog that stops the server (and, with `remove_dir`, deletes the data
    /// directory) once process `pid` has exited, however it exits: `kill -9`, a panic or a
    /// normal exit. It is a small `sh` loop in a process group of its own (so Ctrl-C on the
    /// terminal and test runners' group kills do not end it), polling `kill -0 PID` each second.
    pub fn stop_when_process_exits(&self, pid: u32, remove_dir: bool) -> Result<()> {
        const SCRIPT: &str = r#"pid=$1; dir=$2; remove=$3; shift 3
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@"
if [ "$remove" = 1 ]; then rm -rf "$dir"; fi"#;
        let mut stop: Vec<String> = Vec::new();
        if self.as_postgres {
            stop.extend(["runuser", "-u", SUPERUSER, "--"].map(String::from));
        }
        stop.push(
            self.binaries
                .program("pg_ctl")
                .to_string_lossy()
                .into_owned(),
        );
        stop.extend(["stop", "-D"].map(String::from));
        stop.push(self.dir.to_string_lossy().into_owned());
        stop.extend(["-m", "immediate", "-w"].map(String::from));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", SCRIPT, "gateway-pg-watchdog"])
            .arg(pid.to_string())
            .arg(&self.dir)
            .arg(if remove_dir { "1" } else { "0" })
            .args(&stop)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd.spawn().map_err(|e| ClusterError::Command {
            what: "cannot start the PostgreSQL watchdog (sh)".into(),
            detail: e.to_string(),
        })?;
        Ok(())
    }

    fn init_if_needed(&self, options: &ClusterOptions) -> Result<()> {
        if self.dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        // initdb reads the password from a file: one in a private directory of its own, readable
        // by the user initdb runs as, removed when this returns.
        let password = Password::generate();
        let scratch = tempfile::Builder::new()
            .prefix("local-postgres-init-")
            .tempdir()
            .map_err(io_err(
                "cannot create a directory in",
                &std::env::temp_dir(),
            ))?;
        let pwfile = scratch.path().join("password");
        write_private(&pwfile, &format!("{}\n", password.0))?;
        if self.as_postgres {
            let uid = postgres_uid()?;
            for p in [scratch.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), None).map_err(io_err("cannot chown", p))?;
            }
        }
        let mut cmd = self.command(&self.binaries.program("initdb"));
        cmd.arg("-D").arg(&self.dir).args([
            "--username=postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--auth=scram-sha-256",
        ]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        if !options.durable {
            cmd.arg("--no-sync");
        }
        let out = run(&mut cmd, "initdb")?;
        drop(scratch);
        if !out.status.success() {
            return Err(command_failed("initdb", &cmd, &out));
        }
        self.write_password(&password)?;
        let hba = self.dir.join("pg_hba.conf");
        fs::write(&hba, PG_HBA).map_err(io_err("cannot write", &hba))?;
        let conf = self.dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(io_err("cannot read", &conf))?;
        text.push_str(&self.settings(options.durable));
        fs::write(&conf, text).map_err(io_err("cannot write", &conf))
    }

    /// Settings appended to `postgresql.conf` after `initdb`: loopback only, the socket in the
    /// data directory, sized for a small machine.
    fn settings(&self, durable: bool) -> String {
        let socket_dir = self.dir.to_string_lossy();
        // `dir/.s.PGSQL.NNNNN` must fit a Unix socket path; past that, TCP only.
        let socket_dir = if socket_dir.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            socket_dir.replace('\'', "''")
        } else {
            String::new()
        };
        let onoff = |b: bool| if b { "on" } else { "off" };
        let mut s = String::from("\n# Added by the gateway (src/database/embedded.rs).\n");
        let _ = writeln!(s, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(s, "unix_socket_directories = '{socket_dir}'");
        let _ = writeln!(s, "shared_buffers = 128MB");
        let _ = writeln!(s, "max_connections = 200");
        let _ = writeln!(s, "fsync = {}", onoff(durable));
        let _ = writeln!(s, "synchronous_commit = {}", onoff(durable));
        let _ = writeln!(s, "full_page_writes = {}", onoff(durable));
        // The outbox writes a lot of WAL: spacing checkpoints out means fewer full-page images
        // (less WAL, less I/O), at the cost of a longer crash recovery. Durability is unchanged.
        let _ = writeln!(s, "max_wal_size = 4GB");
        let _ = writeln!(s, "checkpoint_timeout = 15min");
        let _ = writeln!(s, "checkpoint_completion_target = 0.9");
        let _ = writeln!(s, "wal_compression = on");
        let _ = writeln!(s, "wal_buffers = 16MB");
        // The event partitions ask to be vacuumed after 5 % dead rows and the outbox after 20,000
        // (migrations/); look every 5 s instead of every minute, or claims slow down behind dead
        // index entries.
        let _ = writeln!(s, "autovacuum_naptime = 5s");
        let _ = writeln!(s, "log_min_messages = warning");
        s
    }

    /// The password in [`PASSWORD_FILE`], if the file exists.
    fn read_password(&self) -> Result<Option<Password>> {
        let file = self.password_file();
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &file)(e)),
        };
        match parse_pgpass_password(&text) {
            Some(pw) => Ok(Some(Password(pw))),
            None => Err(ClusterError::NoPassword {
                dir: self.dir.clone(),
                reason: format!(
                    "{} has no `*:*:*:{SUPERUSER}:<password>` line",
                    file.display()
                ),
            }),
        }
    }

    /// Writes [`PASSWORD_FILE`] (atomically, mode 0600, owned as the data directory is).
    fn write_password(&self, password: &Password) -> Result<()> {
        let file = self.password_file();
        let tmp = self.dir.join(format!("{PASSWORD_FILE}.tmp"));
        write_private(&tmp, &format!("*:*:*:{SUPERUSER}:{}\n", password.0))?;
        if self.as_postgres {
            let uid = postgres_uid()?;
            std::os::unix::fs::chown(&tmp, Some(uid), None)
                .map_err(io_err("cannot chown", &tmp))?;
        }
        fs::rename(&tmp, &file).map_err(io_err("cannot write", &file))
    }

    fn read_hba(&self) -> Result<String> {
        let hba = self.dir.join("pg_hba.conf");
        fs::read_to_string(&hba).map_err(io_err("cannot read", &hba))
    }

    /// Gives a cluster made with `trust` (by an earlier version) a password: `ALTER ROLE` while
    /// it still trusts us (when `set_password`), the password file, then a `pg_hba.conf` that
    /// asks for it, and a reload. Each step is safe to repeat if a crash interrupts the next.
    fn secure(&mut self, set_password: bool) -> Result<()> {
        if set_password {
            if !hba_trusts(&self.read_hba()?) {
                return Err(ClusterError::NoPassword {
                    dir: self.dir.clone(),
                    reason: "pg_hba.conf has no `trust` line".into(),
                });
            }
            let password = Password::generate();
            // The statement holds the password: neither sqlx's statement log nor the server's
            // log of a failed statement may show it.
            use sqlx::ConnectOptions as _;
            let options = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                .host("127.0.0.1")
                .port(self.port)
                .username(SUPERUSER)
                .database("postgres")
                .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                .log_statements(log::LevelFilter::Off)
                .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
            let sql = format!(
                "SET log_min_error_statement = panic; SET password_encryption = 'scram-sha-256'; \
                 ALTER ROLE {SUPERUSER} PASSWORD '{}'",
                password.0
            );
            block_on(async move {
                use sqlx::{Connection as _, Executor as _};
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                conn.execute(sql.as_str()).await?;
                conn.close().await
            })
            .map_err(|e| ClusterError::Command {
                what: format!(
                    "cannot set a password on the PostgreSQL cluster in {} (made with `trust`)",
                    self.dir.display()
                ),
                detail: e.to_string(),
            })?;
            self.write_password(&password)?;
            self.password = password;
        }
        let hba = self.dir.join("pg_hba.conf");
        fs::write(&hba, PG_HBA).map_err(io_err("cannot write", &hba))?;
        let mut cmd = self.pg_ctl();
        cmd.arg("reload").arg("-D").arg(&self.dir);
        let out = run(&mut cmd, "pg_ctl reload")?;
        if !out.status.success() {
            return Err(command_failed("pg_ctl reload", &cmd, &out));
        }
        Ok(())
    }

    fn start_if_needed(mut self, options: &ClusterOptions) -> Result<LocalCluster> {
        if self.is_running()? {
            self.port = self.running_port()?;
            wait_accepting(
                &self.dir,
                self.port,
                Duration::from_secs(PG_CTL_TIMEOUT_SECS.into()),
            )?;
            return Ok(self);
        }
        // A port found free can be taken before the server binds it: pick another and retry.
        let attempts = if options.port.is_some() { 1 } else { 3 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match options.port {
                Some(p) => p,
                None => free_port().map_err(|e| ClusterError::Command {
                    what: "cannot find a free TCP port on 127.0.0.1".into(),
                    detail: e.to_string(),
                })?,
            };
            match self.start(port) {
                Ok(()) => {
                    self.port = port;
                    self.started_here = true;
                    return Ok(self);
                }
                Err(ClusterError::Start { tail, .. })
                    if attempt < attempts && tail.contains("could not bind") => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn start(&self, port: u16) -> Result<()> {
        let log = self.log_file();
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg_ctl();
        cmd.arg("start")
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(&log);
        cmd.args(["-w", &format!("--timeout={PG_CTL_TIMEOUT_SECS}")]);
        cmd.args(["-o", &format!("-p {port}")]);
        let started = Instant::now();
        let out = run(&mut cmd, "pg_ctl start")?;
        let failure = |reason: String| ClusterError::Start {
            dir: self.dir.clone(),
            reason,
            log: log.clone(),
            tail: log_tail(&log, log_start, 30),
        };
        if !out.status.success() {
            return Err(failure(describe(&cmd, &out)));
        }
        let rest =
            Duration::from_secs(PG_CTL_TIMEOUT_SECS.into()).saturating_sub(started.elapsed());
        wait_accepting(&self.dir, port, rest).map_err(|e| failure(e.to_string()))
    }

    fn is_running(&self) -> Result<bool> {
        if !self.dir.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("status").arg("-D").arg(&self.dir);
        // 0: running; 3: not running; 4: no data directory.
        Ok(run(&mut cmd, "pg_ctl status")?.status.success())
    }

    /// The port in `postmaster.pid` (its fourth line).
    fn running_port(&self) -> Result<u16> {
        let pid_file = self.dir.join("postmaster.pid");
        let text = fs::read_to_string(&pid_file).map_err(io_err("cannot read", &pid_file))?;
        parse_pid_file_port(&text).ok_or_else(|| ClusterError::Command {
            what: format!(
                "cannot read the port of the server running in {}",
                self.dir.display()
            ),
            detail: format!("{} has no port on its fourth line", pid_file.display()),
        })
    }

    fn pg_ctl(&self) -> Command {
        self.command(&self.binaries.program("pg_ctl"))
    }

    /// A command for a PostgreSQL program, as the `postgres` user when we are root.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new(runuser());
            c.args(["-u", SUPERUSER, "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.current_dir("/").stdin(Stdio::null()).env("LC_ALL", "C");
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.stop_on_drop {
            // A throwaway cluster's data need not be written out.
            let mode = if self.temp_dir.is_some() {
                "immediate"
            } else {
                "fast"
            };
            if let Err(e) = self.stop_mode(mode) {
                eprintln!(
                    "gateway: cannot stop PostgreSQL in {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

/// Waits until 127.0.0.1:port accepts TCP connections.
fn wait_accepting(dir: &Path, port: u16, within: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(ClusterError::Command {
                    what: format!(
                        "PostgreSQL in {} does not accept connections on {addr}",
                        dir.display()
                    ),
                    detail: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn connect_options(port: u16, password: &Password, db: &str) -> sqlx::postgres::PgConnectOptions {
    sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .password(&password.0)
        .database(db)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

/// Runs a future to completion on a runtime of its own, in a thread of its own (so it works
/// whether or not the caller is inside a runtime).
fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>> + Send + 'static,
) -> std::result::Result<T, sqlx::Error> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(sqlx::Error::Io)?
            .block_on(fut)
    })
    .join()
    .unwrap_or_else(|_| Err(sqlx::Error::Protocol("the thread panicked".into())))
}

/// Creates (or truncates) a file readable by its owner only and writes `text` to it.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    // `mode` applies only when the file is created.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot chmod", path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("cannot write", path))
}

/// The superuser's password in a pgpass text: the last field of its `*:*:*:postgres:` line.
fn parse_pgpass_password(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let pw = line
            .trim_end()
            .strip_prefix(&format!("*:*:*:{SUPERUSER}:"))?;
        (!pw.is_empty()).then(|| pw.to_string())
    })
}

/// Whether a `pg_hba.conf` text has a line whose method is `trust`.
fn hba_trusts(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local DB USER METHOD | host DB USER ADDRESS [MASK] METHOD [OPTIONS]
        match fields.first() {
            Some(&"local") => fields.get(3) == Some(&"trust"),
            Some(_) => fields.iter().skip(3).any(|f| *f == "trust"),
            None => false,
        }
    })
}

/// The port on the fourth line of a `postmaster.pid` file.
pub fn parse_pid_file_port(text: &str) -> Option<u16> {
    text.lines().nth(3)?.trim().parse().ok()
}

fn runuser() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join("runuser");
        if is_executable(&p) {
            return p;
        }
    }
    PathBuf::from("runuser")
}

/// Gives the data directory to the `postgres` user and checks that it can reach it.
fn hand_to_postgres(dir: &Path) -> Result<()> {
    let uid = postgres_uid()?;
    let meta = fs::metadata(dir).map_err(io_err("cannot read", dir))?;
    if meta.uid() != uid {
        let mut cmd = Command::new("chown");
        cmd.args(["-R", &format!("{SUPERUSER}:")])
            .arg(dir)
            .stdin(Stdio::null());
        let out = run(&mut cmd, "chown")?;
        if !out.status.success() {
            return Err(command_failed("chown", &cmd, &out));
        }
    }
    let mut cmd = Command::new(runuser());
    cmd.args(["-u", SUPERUSER, "--", "test", "-w"])
        .arg(dir)
        .current_dir("/");
    if run(&mut cmd, "runuser")?.status.success() {
        return Ok(());
    }
    let blocking: Vec<String> = dir
        .ancestors()
        .skip(1)
        .filter(|p| {
            fs::metadata(p)
                .map(|m| m.uid() != uid && m.permissions().mode() & 0o001 == 0)
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect();
    let blocking = if blocking.is_empty() {
        String::new()
    } else {
        format!(
            "; these lack it: {} (e.g. `chmod o+x {}`), or configure database.url",
            blocking.join(", "),
            blocking.join(" ")
        )
    };
    Err(ClusterError::Unreachable {
        dir: dir.to_path_buf(),
        blocking,
    })
}

fn postgres_uid() -> Result<u32> {
    let mut cmd = Command::new("id");
    cmd.args(["-u", SUPERUSER]).stdin(Stdio::null());
    let out = run(&mut cmd, "id")?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    match uid {
        Some(uid) if out.status.success() => Ok(uid),
        _ => Err(ClusterError::Command {
            what: format!(
                "running as root, PostgreSQL must run as the {SUPERUSER} system user, which does \
                 not exist (`id -u {SUPERUSER}`); install the postgresql package or configure \
                 database.url"
            ),
            detail: describe(&cmd, &out),
        }),
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    cmd.output().map_err(|e| ClusterError::Command {
        what: format!("cannot run {what} ({})", show(cmd)),
        detail: e.to_string(),
    })
}

fn command_failed(what: &str, cmd: &Command, out: &Output) -> ClusterError {
    ClusterError::Command {
        what: format!("{what} failed"),
        detail: describe(cmd, out),
    }
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn describe(cmd: &Command, out: &Output) -> String {
    let mut s = format!("`{}` exited with {}", show(cmd), out.status);
    for stream in [&out.stderr, &out.stdout] {
        let text = String::from_utf8_lossy(stream);
        let text = text.trim();
        if !text.is_empty() {
            s.push('\n');
            s.push_str(text);
        }
    }
    s
}

/// The last `lines` lines of `log` written after byte `from`.
fn log_tail(log: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    let read = fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", log.display());
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_found_in_pg_hba_conf() {
        assert!(!hba_trusts(PG_HBA));
        assert!(hba_trusts("# c\nlocal all all trust\n"));
        assert!(hba_trusts("host all all 127.0.0.1/32 trust"));
        assert!(hba_trusts("host all all 127.0.0.1 255.255.255.255 trust"));
        assert!(!hba_trusts(
            "# local all all trust\nhost all trust 127.0.0.1/32 md5"
        ));
    }

    #[test]
    fn the_password_is_read_from_its_pgpass_line() {
        assert_eq!(
            parse_pgpass_password("*:*:*:postgres:abc123\n").as_deref(),
            Some("abc123")
        );
        assert_eq!(parse_pgpass_password("*:*:*:postgres:\n"), None);
        assert_eq!(parse_pgpass_password("*:*:*:other:x\n"), None);
        assert!(!format!("{:?}", Password("abc".into())).contains("abc"));
    }

    #[test]
    fn port_is_the_fourth_line_of_postmaster_pid() {
        let text = "4242\n/var/postgres\n1700000000\n54321\n/var/postgres\n127.0.0.1\n";
        assert_eq!(parse_pid_file_port(text), Some(54321));
        assert_eq!(parse_pid_file_port("4242\n/x\n"), None);
    }

    fn fake_install(dir: &Path, programs: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for p in programs {
            let f = dir.join(p);
            fs::write(&f, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn binaries_prefer_path_then_the_highest_debian_version() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        fake_install(&lib.join("9.6/bin"), &PROGRAMS);
        fake_install(&lib.join("15/bin"), &PROGRAMS);
        fake_install(&lib.join("16/bin"), &["initdb", "pg_ctl"]); // incomplete: skipped
        fake_install(&lib.join("13/bin"), &PROGRAMS);
        let found = PgBinaries::find_in(&[], &lib).unwrap();
        assert_eq!(found.bin_dir, lib.join("15/bin"));

        let on_path = root.path().join("path");
        fake_install(&on_path, &PROGRAMS);
        let found = PgBinaries::find_in(&[root.path().join("nothing"), on_path.clone()], &lib);
        assert_eq!(found.unwrap().bin_dir, on_path);
    }

    #[test]
    fn binaries_follow_symbolic_links_on_path() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("lib/15/bin");
        fake_install(&real, &PROGRAMS);
        let local = root.path().join("local/bin");
        fs::create_dir_all(&local).unwrap();
        std::os::unix::fs::symlink(real.join("initdb"), local.join("initdb")).unwrap();
        let found = PgBinaries::find_in(&[local], &root.path().join("none")).unwrap();
        assert_eq!(found.bin_dir, real);
    }

    #[test]
    fn missing_binaries_say_what_was_looked_for() {
        let root = tempfile::tempdir().unwrap();
        let err = PgBinaries::find_in(&[root.path().to_path_buf()], &root.path().join("lib"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("initdb, pg_ctl and postgres"), "{err}");
        assert!(err.contains("lib/*/bin"), "{err}");
        assert!(err.contains(&root.path().display().to_string()), "{err}");
    }
}
