//! corrald: the Corral daemon, and the per-container monitor it re-executes itself as.
//!
//! Until the REST API lands, `corrald container ...` drives the runtime directly: it is what
//! the daemon's instance service will do behind the API, and what the benchmarks time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use corral_runtime::client::{self, Client};
use corral_runtime::proto::ExecRequest;
use corral_runtime::spec::{ContainerSpec, CpuLimit, SeccompPolicy};

#[derive(Parser)]
#[command(name = "corrald", version, about = "The Corral system-container daemon")]
struct Cli {
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Verbose logging (info, the default, plus each request's method and path).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default): serves the API on $CORRAL_DIR/unix.socket.
    Daemon,
    /// Wait until the daemon answers (like `lxd waitready`).
    Waitready {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Ask the daemon to exit; containers keep running unless `--stop-instances`.
    #[command(
        after_help = "Examples:\n  corrald shutdown                    # upgrade the daemon under running containers\n  corrald shutdown --stop-instances   # host shutdown: they start again at the next boot"
    )]
    Shutdown {
        /// Stop every instance cleanly first (each within boot.host_shutdown_timeout), as on
        /// host shutdown; those running now start again when the host next boots.
        #[arg(long)]
        stop_instances: bool,
    },
    /// Set up the daemon's state: `--auto` for the defaults (the `default` dir pool and the
    /// `default` profile), `--preseed` for LXD's preseed YAML on standard input, applied through
    /// the running daemon.
    #[command(
        after_help = "Examples:\n  corrald init --auto\n  corrald init --preseed < preseed.yaml\n  lxd init --dump | corrald init --preseed"
    )]
    Init {
        /// Use the defaults without asking.
        #[arg(long, conflicts_with = "preseed")]
        auto: bool,
        /// Read LXD's preseed YAML (storage_pools, profiles, ...) from standard input.
        #[arg(long)]
        preseed: bool,
    },
    /// Run one container's monitor (started by corrald itself; not for humans).
    #[command(hide = true)]
    Monitor { run_dir: PathBuf },
    /// Serve one proxy device (started by corrald itself; not for humans).
    #[command(hide = true)]
    Proxy { config: PathBuf },
    /// Drive containers directly through the runtime (no daemon, no database).
    #[command(subcommand, alias = "ct")]
    Container(ContainerCmd),
}

#[derive(Subcommand)]
enum ContainerCmd {
    /// Start a container from an unpacked rootfs.
    Start {
        name: String,
        /// The root filesystem (owned by host uid 0; it is idmapped, not copied).
        #[arg(long)]
        rootfs: PathBuf,
        /// Run without a user namespace (security.privileged=true).
        #[arg(long)]
        privileged: bool,
        /// Shift ownership on disk instead of idmapping the rootfs.
        #[arg(long)]
        shift: bool,
        /// limits.memory, in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// limits.processes.
        #[arg(long)]
        processes: Option<u64>,
        /// limits.cpu (a count).
        #[arg(long)]
        cpus: Option<u32>,
        /// Intercept mknod and setxattr (security.syscalls.intercept.*).
        #[arg(long)]
        intercept: bool,
        /// Let the container run containers (security.nesting).
        #[arg(long)]
        nesting: bool,
        /// Init command (default /sbin/init).
        #[arg(last = true)]
        init: Vec<String>,
    },
    /// Checkpoint a running container into a directory with CRIU (it stops, unless
    /// --leave-running).
    Checkpoint {
        name: String,
        /// The image directory (created; must be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Keep the container running (a stateful snapshot).
        #[arg(long)]
        leave_running: bool,
        /// Checkpoint established TCP connections too.
        #[arg(long)]
        tcp_established: bool,
        /// Copy memory in a first pass while the container runs (needs soft-dirty tracking).
        #[arg(long)]
        pre_dump: bool,
    },
    /// Restore a checkpointed container and run it again.
    Restore {
        name: String,
        /// The image directory `container checkpoint` wrote.
        #[arg(long)]
        dir: PathBuf,
    },
    /// List running containers.
    List,
    /// Show a container's state as JSON.
    State { name: String },
    /// Run a command in a container.
    Exec {
        name: String,
        /// Allocate a pty (like `lxc exec -t`).
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a container.
    Stop {
        name: String,
        #[arg(short, long)]
        force: bool,
        /// Seconds to wait for a clean shutdown before killing.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Print the console log.
    Console { name: String },
    /// Freeze a container.
    Pause { name: String },
    /// Thaw a container.
    Resume { name: String },
}

/// Where running containers' monitors keep their sockets.
fn run_root() -> PathBuf {
    std::env::var_os("CORRAL_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/corral"))
}

fn main() {
    let cli = Cli::parse();
    // The monitor must detach before anything can start a thread.
    let command = cli.command.unwrap_or(Command::Daemon);
    if let Command::Monitor { .. } = &command {
        if let Err(e) = corral_runtime::monitor::detach() {
            eprintln!("corrald monitor: cannot detach: {e}");
            std::process::exit(1);
        }
    }
    let level = match (cli.debug, cli.verbose) {
        (true, _) => "debug",
        (false, true) => "info,corrald::api=debug",
        _ => "info",
    };
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| level.into());
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(corrald::log_events::EventsLayer)
            .init();
    }
    let result = match command {
        Command::Daemon => daemon(),
        Command::Waitready { timeout } => waitready(Duration::from_secs(timeout)),
        Command::Shutdown { stop_instances } => shutdown(stop_instances),
        Command::Init { auto, preseed } => init(auto, preseed),
        Command::Monitor { run_dir } => monitor(&run_dir),
        Command::Proxy { config } => proxy(&config),
        Command::Container(cmd) => container(cmd),
    };
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn init(auto: bool, preseed: bool) -> Result<()> {
    if preseed {
        return init_preseed();
    }
    if !auto {
        bail!("say how: `corrald init --auto` (the default pool and profile) or `corrald init --preseed < file.yaml`");
    }
    let paths = corrald::paths::Paths::from_env();
    // A running daemon does it through its API (it owns the network's dnsmasq); otherwise the
    // state is opened here, as the daemon would at its start.
    if get_local("/1.0").is_ok() {
        let client = corral_client::Client::new(paths.socket());
        if let Some(line) = corrald::daemon::default_network_via_api(&client)? {
            println!("{line}");
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find corrald's own executable")?;
    let daemon = corrald::daemon::Daemon::open(paths, exe)?;
    if let Some(line) = daemon.ensure_default_network()? {
        println!("{line}");
    }
    Ok(())
}

fn init_preseed() -> Result<()> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the preseed from standard input")?;
    let seed = corrald::preseed::Preseed::from_yaml(&text)?;
    let paths = corrald::paths::Paths::from_env();
    let pool = paths.pool(corrald::daemon::DEFAULT_POOL);
    seed.check(&pool.display().to_string())?;
    let client = corral_client::Client::new(paths.socket());
    if get_local("/1.0").is_err() {
        bail!(
            "corrald is not running at {}: start it (`corrald &`), then run `corrald init --preseed` again",
            paths.socket().display()
        );
    }
    for line in seed.apply(&client)? {
        println!("{line}");
    }
    Ok(())
}

fn daemon() -> Result<()> {
    corrald::allocator::return_freed_memory();
    let paths = corrald::paths::Paths::from_env();
    let exe = std::env::current_exe().context("cannot find corrald's own executable")?;
    let d = corrald::daemon::Daemon::open(paths, exe)?;
    // Two workers unless tokio's own TOKIO_WORKER_THREADS says otherwise: the blocking work
    // (storage, images, the monitors' sockets) has its own threads.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The server on a worker, not on this thread: a connection it accepts is then polled where
    // it was accepted instead of waking a worker (context switches per `exec -- true` in the
    // daemon: 57 → 35–43, its CPU 2.3–2.5 → 2.1–2.2 ms, load 12).
    rt.block_on(async { tokio::spawn(d.serve()).await.context("the server stopped abnormally")? })
}

/// `GET path` on the daemon's socket with a plain HTTP/1.0 request; the JSON body.
fn get_local(path: &str) -> Result<serde_json::Value> {
    use std::io::Read;
    let socket = corrald::paths::Paths::from_env().socket();
    let mut s = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("cannot reach corrald at {}", socket.display()))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: corral\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(serde_json::from_str(body)?)
}

fn waitready(timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if get_local("/1.0").is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("corrald did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shutdown(stop_instances: bool) -> Result<()> {
    use std::io::Read;
    let socket = corrald::paths::Paths::from_env().socket();
    let mut s = std::os::unix::net::UnixStream::connect(&socket)
        .with_context(|| format!("cannot reach corrald at {}", socket.display()))?;
    write!(
        s,
        "PUT /internal/shutdown?stop-instances={stop_instances} HTTP/1.0\r\nHost: corral\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if answer["type"] == "error" {
        bail!("{}", answer["error"].as_str().unwrap_or("corrald refused to shut down"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get_local("/1.0").is_ok() {
        if std::time::Instant::now() > deadline {
            bail!("corrald is still answering 30 s after agreeing to shut down");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn monitor(run_dir: &Path) -> Result<()> {
    let stdout = std::io::stdout();
    corral_runtime::monitor::run(run_dir, stdout.lock(), &|init_pid| {
        corrald::nics::plug_planned(run_dir, init_pid)
    })
    .with_context(|| format!("monitor of {}", run_dir.display()))?;
    Ok(())
}

/// A proxy device's process: serves until SIGTERM, in a session of its own (it outlives the
/// daemon); prints `ready` once it listens.
fn proxy(config: &Path) -> Result<()> {
    let _ = nix::unistd::setsid();
    let text = std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?;
    let config: corral_proxy::ProxyConfig =
        serde_json::from_slice(&text).with_context(|| format!("invalid proxy config {}", config.display()))?;
    corral_proxy::run_process(config, |_| {
        println!("{}", corrald::proxies::READY);
        // The spawner reads one line; after it, a write to its closed pipe must not kill us.
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2_stdout(&null);
        }
    })?;
    Ok(())
}

fn container(cmd: ContainerCmd) -> Result<()> {
    let root = run_root();
    match cmd {
        ContainerCmd::Start {
            name,
            rootfs,
            privileged,
            shift,
            memory_mib,
            processes,
            cpus,
            intercept,
            nesting,
            init,
        } => {
            validate_name(&name)?;
            let rootfs = rootfs
                .canonicalize()
                .with_context(|| format!("rootfs {}", rootfs.display()))?;
            let mut spec = ContainerSpec::new(&name, rootfs, root.join(&name));
            spec.idmap = if privileged {
                None
            } else {
                Some(corral_runtime::idmap::host_range().default_map())
            };
            if shift {
                spec.rootfs_mode = corral_runtime::spec::RootfsMode::Shift;
            }
            spec.limits.memory = memory_mib.map(|m| m * 1024 * 1024);
            spec.limits.processes = processes;
            spec.limits.cpu = cpus.map(CpuLimit::Count);
            spec.seccomp = SeccompPolicy {
                intercept_mknod: intercept,
                intercept_setxattr: intercept,
                ..SeccompPolicy::default()
            };
            spec.nesting = nesting;
            if !init.is_empty() {
                spec.init = init;
            }
            if Client::new(&spec.run_dir).is_running() {
                bail!("container {name} is already running");
            }
            let exe = std::env::current_exe().context("cannot find corrald's own executable")?;
            client::spawn(&exe, &spec).with_context(|| format!("cannot start {name}"))?;
            println!("{name} started");
        }
        ContainerCmd::Checkpoint {
            name,
            dir,
            leave_running,
            tcp_established,
            pre_dump,
        } => {
            let c = client_for(&root, &name)?;
            let opts = corral_runtime::checkpoint::DumpOptions {
                leave_running,
                tcp_established,
                pre_dump,
            };
            let report = corral_runtime::checkpoint::dump(c.run_dir(), &dir, &opts)
                .with_context(|| format!("cannot checkpoint {name}"))?;
            let how = if leave_running { "still running" } else { "stopped" };
            println!(
                "{name} checkpointed to {} in {} ms ({how})",
                report.dir.display(),
                report.criu_time.as_millis()
            );
        }
        ContainerCmd::Restore { name, dir } => {
            validate_name(&name)?;
            let meta = corral_runtime::checkpoint::read_metadata(&dir)?;
            if meta.spec.name != name {
                bail!("{} is a checkpoint of {}, not of {name}", dir.display(), meta.spec.name);
            }
            let mut spec = meta.spec;
            spec.run_dir = root.join(&name);
            let exe = std::env::current_exe().context("cannot find corrald's own executable")?;
            let began = std::time::Instant::now();
            corral_runtime::checkpoint::restore(&exe, &spec, &dir).with_context(|| format!("cannot restore {name}"))?;
            println!("{name} restored in {} ms", began.elapsed().as_millis());
        }
        ContainerCmd::List => {
            let mut names: Vec<String> = std::fs::read_dir(&root)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| Client::new(&e.path()).is_running())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            for n in names {
                let state = Client::new(&root.join(&n)).state();
                match state {
                    Ok(s) => println!(
                        "{n}\t{:?}\tinit={}\tmemory={}KiB\tprocesses={}",
                        s.status,
                        s.init_pid,
                        s.memory_bytes / 1024,
                        s.processes
                    ),
                    Err(e) => println!("{n}\terror: {e}"),
                }
            }
        }
        ContainerCmd::State { name } => {
            let s = client_for(&root, &name)?.state()?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        ContainerCmd::Exec { name, tty, command } => {
            let c = client_for(&root, &name)?;
            let code = if tty {
                exec_tty(&c, &command)?
            } else {
                exec_inherit(&c, &command)?
            };
            std::process::exit(code);
        }
        ContainerCmd::Stop { name, force, timeout } => {
            let outcome = client_for(&root, &name)?.stop(Duration::from_secs(timeout), force)?;
            let how = if outcome.clean { "shut down" } else { "killed" };
            println!("{name} stopped: {how} ({:?})", outcome.exit);
        }
        ContainerCmd::Console { name } => {
            let log = client_for(&root, &name)?.console_log()?;
            std::io::stdout().write_all(&log)?;
        }
        ContainerCmd::Pause { name } => client_for(&root, &name)?.freeze()?,
        ContainerCmd::Resume { name } => client_for(&root, &name)?.thaw()?,
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        bail!("invalid container name {name:?}: use 1 to 63 letters, digits and dashes, starting with a letter");
    }
    Ok(())
}

fn client_for(root: &Path, name: &str) -> Result<Client> {
    validate_name(name)?;
    let c = Client::new(&root.join(name));
    if !c.is_running() {
        bail!("container {name} is not running");
    }
    Ok(c)
}

/// exec with this process's own stdin, stdout and stderr.
fn exec_inherit(c: &Client, command: &[String]) -> Result<i32> {
    use std::os::fd::AsFd;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let stdio = [
        dup(std::io::stdin().as_fd())?,
        dup(std::io::stdout().as_fd())?,
        dup(std::io::stderr().as_fd())?,
    ];
    let session = c.exec(&ExecRequest::new(command), client::ExecStdio::Fds(stdio))?;
    Ok(session.wait()?)
}

/// exec with a pty, copying between it and this terminal.
fn exec_tty(c: &Client, command: &[String]) -> Result<i32> {
    let session = c.exec(&ExecRequest::new(command), client::ExecStdio::Pty)?;
    let pty = session.pty.as_ref().context("the monitor sent no pty")?.try_clone()?;
    let mut reader = std::fs::File::from(pty.try_clone()?);
    let mut writer = std::fs::File::from(pty);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut writer);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut std::io::stdout());
    });
    Ok(session.wait()?)
}
