//! Instance verbs: launch, init, start/stop/restart/pause/resume, delete, rename, info, exec,
//! shell.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use corral_api::{
    Config, Instance, InstancePost, InstancePut, InstanceSource, InstanceState, InstanceStatePut, InstanceType,
    InstancesPost, Server,
};
use corral_client::{encode_segment, Client, ClientError, ExecOptions};

use crate::output::{date, size, yaml};
use crate::remotes::local_name;

#[derive(Args)]
pub struct CreateArgs {
    /// Image alias or fingerprint, or REMOTE:ALIAS on an image server (`corral remote add`)
    pub image: String,
    /// Instance name (default: a random one)
    pub name: Option<String>,
    /// Config key=value to apply to the new instance
    #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Profile to apply to the new instance (repeatable; default: the "default" profile)
    #[arg(short = 'p', long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Create the instance with no profiles applied
    #[arg(long, conflicts_with = "profiles")]
    pub no_profiles: bool,
    /// Ephemeral instance: deleted when it stops
    #[arg(short = 'e', long)]
    pub ephemeral: bool,
    /// Create a virtual machine (not supported by corrald)
    #[arg(long)]
    pub vm: bool,
    /// Instance description
    #[arg(long)]
    pub description: Option<String>,
    /// Storage pool for the instance's root disk (default: the profile's)
    #[arg(short = 's', long = "storage", value_name = "POOL")]
    pub storage: Option<String>,
    /// Network to attach the instance to (an eth0 on it, instead of the profile's)
    #[arg(short = 'n', long = "network", value_name = "NETWORK")]
    pub network: Option<String>,
}

#[derive(Args)]
pub struct NamesArgs {
    /// Instance names
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args)]
pub struct StartArgs {
    /// Instance names
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Boot afresh, discarding the state a stateful stop saved
    #[arg(long)]
    pub stateless: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Instance names
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Kill the instances rather than asking them to shut down
    #[arg(short, long)]
    pub force: bool,
    /// Seconds to wait for a clean shutdown (-1: for ever)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub timeout: i64,
    /// Save the running state (memory, processes) so that the next start resumes it (stop only)
    #[arg(long)]
    pub stateful: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Instance names
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Stop running instances first (killing them)
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Args)]
pub struct RenameArgs {
    pub old: String,
    pub new: String,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Instance name; without it, the server's information
    pub name: Option<String>,
    /// Show the instance's log (and the last checkpoint or restore log, if any)
    #[arg(long)]
    pub show_log: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Instance name
    pub name: String,
    /// Allocate a terminal, and put ours in raw mode
    #[arg(short = 't', long = "force-interactive", conflicts_with = "force_noninteractive")]
    pub force_interactive: bool,
    /// Don't allocate a terminal, even if stdin and stdout are ones
    #[arg(short = 'T', long = "force-noninteractive")]
    pub force_noninteractive: bool,
    /// Environment variable to set (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Directory to run the command in
    #[arg(long)]
    pub cwd: Option<String>,
    /// User ID to run the command as
    #[arg(long, default_value_t = 0)]
    pub user: u32,
    /// Group ID to run the command as
    #[arg(long, default_value_t = 0)]
    pub group: u32,
    /// The command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct ShellArgs {
    /// Instance name
    pub name: String,
}

/// `/1.0/instances/<name>`; `local:c1` is `c1`, another remote an error.
pub fn instance_path(name: &str) -> Result<String> {
    Ok(format!("/1.0/instances/{}", encode_segment(local_name(name)?)))
}

/// The writable fields of `inst`, for a PUT of it changed.
pub fn writable(inst: Instance) -> InstancePut {
    InstancePut {
        architecture: inst.architecture,
        config: inst.config,
        devices: inst.devices,
        ephemeral: inst.ephemeral,
        profiles: Some(inst.profiles),
        restore: String::new(),
        stateful: inst.stateful,
        description: inst.description,
    }
}

/// `key=value` pairs into a map; lxc's message for a bad one.
pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(anyhow!("Bad key=value pair: {p}")),
        })
        .collect()
}

/// The image to create from: an alias if one has that name, else a fingerprint (or prefix);
/// `REMOTE:IMAGE` on an image server (or another daemon) is handed to the daemon as the
/// source's server, protocol and certificate, and the daemon downloads it.
fn image_source(c: &Client, image: &str) -> Result<InstanceSource> {
    let mut image = image;
    if let Some((remote, rest)) = image.split_once(':') {
        if remote == crate::remotes::current_remote() || remote == crate::remotes::LOCAL {
            image = rest;
        } else {
            let Some(server) = crate::remotes::image_server(remote)? else {
                bail!("Remote {remote:?} doesn't exist (see `corral remote list`)");
            };
            if rest.is_empty() {
                bail!("no image given on remote {remote:?}");
            }
            return Ok(InstanceSource {
                kind: "image".into(),
                server: server.url,
                protocol: server.protocol,
                certificate: server.certificate,
                alias: rest.to_string(),
                mode: "pull".into(),
                ..Default::default()
            });
        }
    }
    if image.is_empty() {
        bail!("no image given");
    }
    let mut source = InstanceSource {
        kind: "image".into(),
        ..Default::default()
    };
    match c.get::<serde_json::Value>(&format!("/1.0/images/aliases/{}", encode_segment(image))) {
        Ok(_) => source.alias = image.to_string(),
        Err(e) if e.is_not_found() => source.fingerprint = image.to_string(),
        Err(e) => return Err(e.into()),
    }
    Ok(source)
}

pub fn create(c: &Client, a: CreateArgs, start: bool) -> Result<()> {
    let source = image_source(c, &a.image)?;
    let config: Config = parse_pairs(&a.config)?;
    let profiles = if a.no_profiles {
        Some(Vec::new())
    } else if a.profiles.is_empty() {
        None
    } else {
        Some(a.profiles.clone())
    };
    let mut post = InstancesPost {
        config,
        ephemeral: a.ephemeral,
        profiles,
        description: a.description.clone().unwrap_or_default(),
        devices: {
            // As lxc: the root disk on that pool, an eth0 on that network.
            let mut devices = corral_api::Devices::new();
            if let Some(pool) = &a.storage {
                devices.insert(
                    "root".into(),
                    [("type", "disk"), ("path", "/"), ("pool", pool.as_str())]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            if let Some(net) = &a.network {
                devices.insert(
                    "eth0".into(),
                    [("type", "nic"), ("network", net.as_str()), ("name", "eth0")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            devices
        },
        source,
        kind: if a.vm {
            InstanceType::VirtualMachine
        } else {
            InstanceType::Container
        },
        ..Default::default()
    };

    let name = match &a.name {
        Some(n) => {
            let n = local_name(n)?;
            outln!("Creating {n}");
            post.name = n.to_string();
            let resp = c.post("/1.0/instances", &post)?;
            c.wait(&resp, None)?;
            n.to_string()
        }
        None => {
            outln!("Creating the instance");
            let mut tries = 0;
            loop {
                post.name = crate::names::random();
                match c.post("/1.0/instances", &post) {
                    Ok(resp) => {
                        c.wait(&resp, None)?;
                        break;
                    }
                    Err(ClientError::Api { code: 409, .. }) if tries < 10 => tries += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            outln!("Instance name is: {}", post.name);
            post.name.clone()
        }
    };
    if start {
        outln!("Starting {name}");
        state_action(c, &name, "start", false, -1).with_context(|| {
            format!("cannot start {name} (it was created: see `corral info {name}`, or delete it with `corral delete {name}`)")
        })?;
    }
    Ok(())
}

pub(crate) fn state_action(c: &Client, name: &str, action: &str, force: bool, timeout: i64) -> Result<()> {
    state_action_with(c, name, action, force, timeout, false)
}

fn state_action_with(c: &Client, name: &str, action: &str, force: bool, timeout: i64, stateful: bool) -> Result<()> {
    let req = InstanceStatePut {
        action: action.into(),
        timeout,
        force,
        stateful,
    };
    let resp = c.put(&format!("{}/state", instance_path(name)?), &req)?;
    c.wait(&resp, None)?;
    Ok(())
}

pub fn change_state(c: &Client, names: &[String], action: &str, force: bool, timeout: i64) -> Result<()> {
    for name in names {
        state_action(c, name, action, force, timeout)?;
    }
    Ok(())
}

/// `corral start`: as `lxc start`, resumes an instance stopped with `--stateful` from its
/// state (unless `--stateless`, which discards it).
pub fn start(c: &Client, a: StartArgs) -> Result<()> {
    for name in &a.names {
        let inst: Instance = c.get(&instance_path(name)?)?;
        let stateful = inst.stateful && !a.stateless;
        state_action_with(c, name, "start", false, -1, stateful)?;
    }
    Ok(())
}

/// `corral stop [--stateful]`.
pub fn stop(c: &Client, a: StopArgs) -> Result<()> {
    for name in &a.names {
        state_action_with(c, name, "stop", a.force, a.timeout, a.stateful)?;
    }
    Ok(())
}

pub fn delete(c: &Client, a: DeleteArgs) -> Result<()> {
    for name in &a.names {
        let path = instance_path(name)?;
        if a.force {
            let state: InstanceState = c.get(&format!("{path}/state"))?;
            if matches!(state.status.as_str(), "Running" | "Frozen") {
                state_action(c, name, "stop", true, -1)?;
            }
        }
        match c.delete(&path) {
            Ok(resp) => {
                c.wait(&resp, None)?;
            }
            // An ephemeral instance is gone once stopped.
            Err(e) if a.force && e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn rename(c: &Client, a: RenameArgs) -> Result<()> {
    let post = InstancePost {
        name: local_name(&a.new)?.to_string(),
        ..Default::default()
    };
    let resp = c.post(&instance_path(&a.old)?, &post)?;
    c.wait(&resp, None)?;
    Ok(())
}

pub fn info(c: &Client, a: InfoArgs) -> Result<()> {
    let Some(name) = a.name else {
        let server: Server = c.get("/1.0")?;
        out!("{}", yaml(&server)?);
        return Ok(());
    };
    let path = instance_path(&name)?;
    let inst: Instance = c.get(&path)?;
    let state: InstanceState = c.get(&format!("{path}/state"))?;
    out!("{}", render_info(&inst, &state));
    let snaps: Vec<corral_api::InstanceSnapshot> = c.get(&format!("{path}/snapshots?recursion=1"))?;
    if !snaps.is_empty() {
        out!("\nSnapshots:");
        for s in &snaps {
            let stateful = if s.stateful { "  (stateful)" } else { "" };
            out!("  {}  {}{stateful}", s.name, date(&s.created_at.0));
        }
    }
    if a.show_log {
        let logs: Vec<String> = c.get(&format!("{path}/logs"))?;
        let mut shown = vec!["lxc.log"];
        // A checkpoint's or restore's CRIU log, newest kind last.
        for criu in ["criu-dump.log", "criu-restore.log"] {
            if logs.iter().any(|l| l.ends_with(&format!("/{criu}"))) {
                shown.push(criu);
            }
        }
        for log in shown {
            let resp = c.raw("GET", &format!("{path}/logs/{log}"), &[], None)?;
            out!("\nLog ({log}):\n");
            if resp.status == 200 {
                out!("{}", String::from_utf8_lossy(&resp.body));
            }
        }
    }
    Ok(())
}

fn render_info(inst: &Instance, state: &InstanceState) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "Name: {}", inst.name);
    if !inst.description.is_empty() {
        let _ = writeln!(o, "Description: {}", inst.description);
    }
    let _ = writeln!(o, "Status: {}", inst.status.to_uppercase());
    let kind = match inst.kind {
        InstanceType::Any => "container",
        k => k.as_str(),
    };
    if inst.ephemeral {
        let _ = writeln!(o, "Type: {kind} (ephemeral)");
    } else {
        let _ = writeln!(o, "Type: {kind}");
    }
    let _ = writeln!(o, "Architecture: {}", inst.architecture);
    if inst.stateful {
        let _ = writeln!(
            o,
            "Stateful: yes (stopped with its state: `start` resumes it, `start --stateless` boots afresh)"
        );
    }
    if state.pid > 0 {
        let _ = writeln!(o, "PID: {}", state.pid);
    }
    let _ = writeln!(o, "Created: {}", date(&inst.created_at.0));
    let last = date(&inst.last_used_at.0);
    if !last.is_empty() {
        let _ = writeln!(o, "Last Used: {last}");
    }
    if !inst.profiles.is_empty() {
        let _ = writeln!(o, "Profiles: {}", inst.profiles.join(", "));
    }
    if state.pid > 0 || state.processes > 0 {
        let _ = writeln!(o, "\nResources:");
        let _ = writeln!(o, "  Processes: {}", state.processes);
        if !state.disk.is_empty() {
            let _ = writeln!(o, "  Disk usage:");
            for (dev, d) in &state.disk {
                let _ = writeln!(o, "    {dev}: {}", size(d.usage));
            }
        }
        let _ = writeln!(o, "  CPU usage:");
        let _ = writeln!(o, "    CPU usage (in seconds): {}", state.cpu.usage / 1_000_000_000);
        let _ = writeln!(o, "  Memory usage:");
        let _ = writeln!(o, "    Memory (current): {}", size(state.memory.usage));
        if state.memory.usage_peak > 0 {
            let _ = writeln!(o, "    Memory (peak): {}", size(state.memory.usage_peak));
        }
        if state.memory.swap_usage > 0 {
            let _ = writeln!(o, "    Swap (current): {}", size(state.memory.swap_usage));
        }
        let nets: Vec<_> = state.network.iter().filter(|(n, _)| n.as_str() != "lo").collect();
        if !nets.is_empty() {
            let _ = writeln!(o, "  Network usage:");
            for (n, net) in nets {
                let _ = writeln!(o, "    {n}:");
                let _ = writeln!(o, "      Type: {}", net.kind);
                let _ = writeln!(o, "      State: {}", net.state.to_uppercase());
                if !net.host_name.is_empty() {
                    let _ = writeln!(o, "      Host interface: {}", net.host_name);
                }
                let _ = writeln!(o, "      MAC address: {}", net.hwaddr);
                let _ = writeln!(o, "      MTU: {}", net.mtu);
                let _ = writeln!(o, "      Bytes received: {}", size(net.counters.bytes_received));
                let _ = writeln!(o, "      Bytes sent: {}", size(net.counters.bytes_sent));
                let _ = writeln!(o, "      Packets received: {}", net.counters.packets_received);
                let _ = writeln!(o, "      Packets sent: {}", net.counters.packets_sent);
                if !net.addresses.is_empty() {
                    let _ = writeln!(o, "      IP addresses:");
                    for a in &net.addresses {
                        let _ = writeln!(o, "        {}:  {}/{} ({})", a.family, a.address, a.netmask, a.scope);
                    }
                }
            }
        }
    }
    o
}

pub fn exec(c: &Client, a: ExecArgs) -> Result<i32> {
    let interactive = if a.force_interactive {
        true
    } else if a.force_noninteractive {
        false
    } else {
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    };
    let mut env = BTreeMap::new();
    if interactive {
        env.insert(
            "TERM".to_string(),
            std::env::var("TERM")
                .ok()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "xterm".into()),
        );
    }
    env.extend(parse_pairs(&a.env)?);
    let opts = ExecOptions {
        command: a.command,
        env,
        interactive,
        cwd: a.cwd,
        user: a.user,
        group: a.group,
    };
    Ok(c.exec(local_name(&a.name)?, &opts)?)
}

/// `lxc shell`: a login shell, `su -l` where there is one, else `sh -l`.
pub fn shell(c: &Client, a: ShellArgs) -> Result<i32> {
    let interactive = std::io::stdin().is_terminal();
    exec(
        c,
        ExecArgs {
            name: a.name,
            force_interactive: interactive,
            force_noninteractive: !interactive,
            env: Vec::new(),
            cwd: None,
            user: 0,
            group: 0,
            command: [
                "/bin/sh",
                "-c",
                "if command -v su >/dev/null 2>&1; then exec su -l; else exec /bin/sh -l; fi",
            ]
            .map(String::from)
            .to_vec(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let m = parse_pairs(&["a=b".into(), "c==d".into(), "e=".into()]).unwrap();
        assert_eq!(m["a"], "b");
        assert_eq!(m["c"], "=d");
        assert_eq!(m["e"], "");
        assert_eq!(
            parse_pairs(&["nope".into()]).unwrap_err().to_string(),
            "Bad key=value pair: nope"
        );
        assert!(parse_pairs(&["=x".into()]).is_err());
    }

    #[test]
    fn info_of_a_running_instance() {
        let inst = Instance {
            name: "c1".into(),
            status: "Running".into(),
            kind: InstanceType::Container,
            architecture: "x86_64".into(),
            profiles: vec!["default".into()],
            ..Default::default()
        };
        let state = InstanceState {
            pid: 42,
            processes: 3,
            memory: corral_api::InstanceStateMemory {
                usage: 3 * 1024 * 1024,
                ..Default::default()
            },
            cpu: corral_api::InstanceStateCpu { usage: 2_500_000_000 },
            ..Default::default()
        };
        let text = render_info(&inst, &state);
        assert!(text.starts_with("Name: c1\nStatus: RUNNING\nType: container\nArchitecture: x86_64\nPID: 42\n"));
        assert!(text.contains("  Processes: 3\n"), "{text}");
        assert!(text.contains("    CPU usage (in seconds): 2\n"), "{text}");
        assert!(text.contains("    Memory (current): 3.00MiB\n"), "{text}");
        assert!(!text.contains("Stateful"), "{text}");
    }

    #[test]
    fn info_of_a_statefully_stopped_instance() {
        let inst = Instance {
            name: "c1".into(),
            status: "Stopped".into(),
            stateful: true,
            ..Default::default()
        };
        let text = render_info(&inst, &InstanceState::default());
        assert!(text.contains("\nStateful: yes"), "{text}");
    }
}
