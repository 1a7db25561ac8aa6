//! `corral`: the command line client of corrald, with the verbs an `lxc` user knows.
//!
//! It talks to `$CORRAL_DIR/unix.socket` (default /var/lib/corral) through `corral-client`.
//! Success exits 0; failure prints `Error: <message>` on stderr and exits 1; `exec` exits with
//! the command's own code.

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// `print!` that ends the program quietly when stdout is a closed pipe (`corral list | head`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that ends the program quietly when stdout is a closed pipe.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod backups;
mod config;
mod console;
mod devices;
mod editor;
mod files;
mod image_build;
mod image_files;
mod images;
mod instances;
mod list;
mod migrate;
mod misc;
mod monitor;
mod names;
mod networks;
mod output;
mod profiles;
mod progress;
mod remotes;
mod snapshots;
mod storage;
mod trust;

const EXAMPLES: &str = "\
Examples:
  corral image import busybox.tar.xz --alias busybox
  corral launch busybox c1
  corral list
  corral exec c1 -- ls /
  corral shell c1
  corral config set c1 limits.memory 256MiB
  corral stop c1
  corral delete -f c1

The daemon is reached at $CORRAL_DIR/unix.socket (default /var/lib/corral/unix.socket).";

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Command line client for Corral, a system-container manager that speaks LXD's API",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Create and start an instance from an image
    #[command(
        after_help = "Examples:\n  corral launch busybox c1\n  corral launch busybox -c limits.memory=256MiB\n  \
                            corral launch 3f2a1b c2 --ephemeral -p default"
    )]
    Launch(instances::CreateArgs),
    /// Create an instance from an image, without starting it
    #[command(
        after_help = "Examples:\n  corral init busybox c1\n  corral init busybox c1 -c security.privileged=true"
    )]
    Init(instances::CreateArgs),
    /// Make an image from an instance or snapshot
    #[command(
        after_help = "Examples:\n  corral publish c1 --alias mine --public\n  corral publish c1/snap0 --compression xz"
    )]
    Publish(images::PublishArgs),
    /// Start instances
    #[command(after_help = "Example:\n  corral start c1 c2")]
    Start(instances::StartArgs),
    /// Stop instances
    #[command(after_help = "Examples:\n  corral stop c1\n  corral stop -f c1 c2\n  corral stop c1 --timeout 10")]
    Stop(instances::StopArgs),
    /// Restart instances
    #[command(after_help = "Example:\n  corral restart c1 --timeout 10")]
    Restart(instances::StopArgs),
    /// Pause (freeze) instances
    #[command(alias = "freeze")]
    Pause(instances::NamesArgs),
    /// Resume (unfreeze) paused instances
    #[command(alias = "unfreeze")]
    Resume(instances::NamesArgs),
    /// Delete instances
    #[command(
        alias = "rm",
        after_help = "Examples:\n  corral delete c1\n  corral delete -f c1 c2   # stop them first"
    )]
    Delete(instances::DeleteArgs),
    /// Rename an instance
    #[command(after_help = "Example:\n  corral rename c1 web")]
    Rename(instances::RenameArgs),
    /// Take a snapshot of an instance
    #[command(after_help = "Examples:\n  corral snapshot c1\n  corral snapshot c1 before-upgrade")]
    Snapshot(snapshots::SnapshotArgs),
    /// Restore any snapshot of an instance (a running instance is restarted)
    #[command(after_help = "Example:\n  corral restore c1 before-upgrade")]
    Restore(snapshots::RestoreArgs),
    /// Copy an instance or a snapshot to a new instance, on this server or another
    #[command(
        after_help = "Examples:\n  corral copy c1 c2\n  corral copy c1/snap0 c3 --instance-only\n  \
                            corral copy c1 h2:c1 --storage fast\n  corral copy c1 h2:c1 --refresh"
    )]
    Copy(migrate::CopyArgs),
    /// Move or rename an instance, to another pool or another server
    #[command(
        alias = "mv",
        after_help = "Examples:\n  corral move c1 c2\n  corral move c1 h2:\n  corral move h1:c1 h2:c1 --stateless\n  \
                      corral move c1 c1 --storage fast"
    )]
    Move(migrate::CopyArgs),
    /// Export an instance (and its snapshots) to a backup tarball
    #[command(
        after_help = "Examples:\n  corral export c1\n  corral export c1 c1.tar.zst --compression zstd --instance-only"
    )]
    Export(backups::ExportArgs),
    /// Import a backup tarball as a new instance
    #[command(after_help = "Examples:\n  corral import c1.tar.gz\n  corral import c1.tar.gz c2 --storage fast")]
    Import(backups::ImportArgs),
    /// List instances
    #[command(
        alias = "ls",
        after_help = "Filters:\n  c1                 names starting with c1\n  status=running     by state (also \
                      type=, architecture=, name=, description=)\n  user.role=web      by a config key\n\n\
                      Columns (-c, default ns46tS):\n  n name, s state, 4 IPv4, 6 IPv6, t type, S snapshots, \
                      a architecture,\n  c created at, l last used at, d description, p PID, N processes, P \
                      profiles,\n  m memory usage, u CPU usage, f base image, F base image (full), b storage pool,\n  \
                      L location\n\nExamples:\n  corral list\n  corral list status=running -c ns4\n  corral list \
                      --format csv"
    )]
    List(list::ListArgs),
    /// Show an instance's state and resources (or the server's, without a name)
    #[command(after_help = "Example:\n  corral info c1")]
    Info(instances::InfoArgs),
    /// Run a command in an instance
    #[command(
        after_help = "Examples:\n  corral exec c1 -- ls -l /\n  echo hi | corral exec c1 -- cat\n  \
                            corral exec c1 -t -- sh\n  corral exec c1 --env FOO=bar --cwd /tmp -- env"
    )]
    Exec(instances::ExecArgs),
    /// Attach to an instance's console, or print its log
    #[command(after_help = "Examples:\n  corral console c1\n  corral console c1 --show-log")]
    Console(console::ConsoleArgs),
    /// Open a login shell in an instance
    #[command(after_help = "Example:\n  corral shell c1")]
    Shell(instances::ShellArgs),
    /// Show and change instance options and devices
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Push, pull, edit and delete files in instances
    #[command(subcommand)]
    File(files::FileCmd),
    /// Manage profiles
    #[command(subcommand)]
    Profile(profiles::ProfileCmd),
    /// Manage images
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// Manage and attach instances to networks
    #[command(subcommand)]
    Network(networks::NetworkCmd),
    /// Show background operations
    #[command(subcommand)]
    Operation(misc::OperationCmd),
    /// Manage storage pools and volumes
    #[command(subcommand)]
    Storage(storage::StorageCmd),
    /// Show the remote servers (only `local` for now)
    #[command(subcommand)]
    Remote(remotes::RemoteCmd),
    /// Watch the server's events as they happen
    #[command(
        after_help = "Examples:\n  corral monitor\n  corral monitor --type lifecycle --pretty\n  \
                      corral monitor --type lifecycle,operation --format json | jq .metadata"
    )]
    Monitor(monitor::MonitorArgs),
    /// Send a raw request to the API
    #[command(
        after_help = "Examples:\n  corral query /1.0\n  corral query -X PATCH -d '{\"config\":{\"user.a\":\"b\"}}' \
                            /1.0/instances/c1 --wait"
    )]
    Query(misc::QueryArgs),
    /// Show the client and server versions
    Version,
    /// Print a shell completion script
    #[command(hide = true)]
    Completion(CompletionArgs),
}

#[derive(Args)]
struct CompletionArgs {
    shell: clap_complete::Shell,
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let cli = match cli.command {
        Command::Remote(cmd) => {
            remotes::remote(cmd)?;
            return Ok(0);
        }
        // Local work: no daemon, no remote.
        Command::Image(images::ImageCmd::Build(a)) => {
            image_build::run(a)?;
            return Ok(0);
        }
        command => Cli { command },
    };
    let args: Vec<String> = std::env::args().collect();
    let client = remotes::client_for(&remotes::select(&args)?)?;
    let c = &client;
    match cli.command {
        Command::Launch(a) => instances::create(c, a, true)?,
        Command::Init(a) => instances::create(c, a, false)?,
        Command::Publish(a) => images::publish(c, a)?,
        Command::Start(a) => instances::start(c, a)?,
        Command::Stop(a) => instances::stop(c, a)?,
        Command::Restart(a) => instances::change_state(c, &a.names, "restart", a.force, a.timeout)?,
        Command::Pause(a) => instances::change_state(c, &a.names, "freeze", false, -1)?,
        Command::Resume(a) => instances::change_state(c, &a.names, "unfreeze", false, -1)?,
        Command::Delete(a) => instances::delete(c, a)?,
        Command::Rename(a) => instances::rename(c, a)?,
        Command::Snapshot(a) => snapshots::snapshot(c, a)?,
        Command::Restore(a) => snapshots::restore(c, a)?,
        Command::Copy(a) => migrate::copy(a)?,
        Command::Move(a) => migrate::mv(a)?,
        Command::Export(a) => backups::export(c, a)?,
        Command::Import(a) => backups::import(c, a)?,
        Command::List(a) => list::list(c, a)?,
        Command::Info(a) => instances::info(c, a)?,
        Command::Exec(a) => return instances::exec(c, a),
        Command::Shell(a) => return instances::shell(c, a),
        Command::Console(a) => console::console(c, a)?,
        Command::Config(cmd) => config::config(c, cmd)?,
        Command::File(cmd) => files::file(c, cmd)?,
        Command::Profile(cmd) => profiles::profile(c, cmd)?,
        Command::Image(cmd) => images::image(c, cmd)?,
        Command::Network(cmd) => networks::network(c, cmd)?,
        Command::Operation(cmd) => misc::operation(c, cmd)?,
        Command::Storage(cmd) => storage::storage(c, cmd)?,
        Command::Remote(_) => unreachable!("handled above"),
        Command::Monitor(a) => monitor::monitor(c, a)?,
        Command::Query(a) => misc::query(c, a)?,
        Command::Version => misc::version(c),
        Command::Completion(a) => {
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "corral", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(if code < 0 { 1 } else { 255 })),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_parses_like_lxc() {
        let cli =
            Cli::try_parse_from(["corral", "exec", "c1", "--env", "A=b", "-T", "--", "sh", "-c", "exit 3"]).unwrap();
        let Command::Exec(a) = cli.command else { panic!() };
        assert_eq!(a.name, "c1");
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
        assert!(a.force_noninteractive);
        assert_eq!(a.env, ["A=b"]);
        let cli = Cli::try_parse_from(["corral", "exec", "c1", "ls", "-l"]).unwrap();
        let Command::Exec(a) = cli.command else { panic!() };
        assert_eq!(a.command, ["ls", "-l"]);
        assert!(Cli::try_parse_from(["corral", "exec", "c1"]).is_err());
    }
}
