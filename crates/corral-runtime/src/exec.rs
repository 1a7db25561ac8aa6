//! Running a command inside a running container.
//!
//! The monitor forks a fresh helper per command (setns into a user or mount namespace is
//! refused to a multi-threaded process, and the helper must not carry the monitor's state). The
//! helper joins the container's cgroups, then all its namespaces at once through a pidfd of
//! init, allocates the pty inside the container's own devpts when asked, and forks the command
//! (a new PID namespace applies only to children). It stays as the command's parent to relay
//! signals and to turn its end into an exit code: status, or 128 + signal.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{setresgid, setresuid, Gid, Uid};

use crate::cgroup::Cgroup;
use crate::proto::{ExecRequest, ExitInfo, Reply};
use crate::spec::ContainerSpec;
use crate::{caps, packet, seccomp, sys};

/// Exit code when the command could not be found, as a shell reports it.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the command could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The helper's body, in the child the monitor forked. Never returns.
pub fn helper(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    init_pidfd: BorrowedFd<'_>,
    req: &ExecRequest,
    stdio: Vec<OwnedFd>,
    conn: BorrowedFd<'_>,
    notify_channel: Option<OwnedFd>,
) -> ! {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    sys::reset_signal_dispositions();
    match join_and_run(spec, cgroup, init_pidfd, req, stdio, conn, notify_channel) {
        Ok(code) => sys::exit_now(code),
        Err(msg) => {
            let _ = packet::send(conn, &Reply::Error(msg), &[]);
            sys::exit_now(EXIT_CANNOT_EXEC)
        }
    }
}

fn join_and_run(
    spec: &ContainerSpec,
    cgroup: &Cgroup,
    init_pidfd: BorrowedFd<'_>,
    req: &ExecRequest,
    stdio: Vec<OwnedFd>,
    conn: BorrowedFd<'_>,
    notify_channel: Option<OwnedFd>,
) -> Result<i32, String> {
    if req.argv.is_empty() {
        return Err("exec needs a command".into());
    }
    if !req.tty && stdio.len() != 3 {
        return Err(format!(
            "exec without a tty needs 3 stdio descriptors, got {}",
            stdio.len()
        ));
    }
    cgroup
        .add_joining_process(std::process::id() as i32)
        .map_err(|e| format!("cannot join the container's cgroup: {e}"))?;
    // Until setns, this process holds the monitor's descriptors: keep the container's root
    // from ptracing it.
    sys::set_not_dumpable().map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    if spec.idmap.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // Through the monitor's pidfd of init: a reused pid can never send us elsewhere.
    setns(init_pidfd, flags).map_err(|e| format!("cannot join the container's namespaces: {e}"))?;
    // Become the container's root first: the pty and everything after is created as it.
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| format!("setresgid(0): {e}"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(|e| format!("setresuid(0): {e}"))?;

    let pty = if req.tty { Some(open_pty(req)?) } else { None };
    match &pty {
        Some((master, _)) => packet::send(conn, &Reply::ExecStarted { pty: true }, &[master.as_raw_fd()]),
        None => packet::send(conn, &Reply::ExecStarted { pty: false }, &[]),
    }
    .map_err(|e| format!("cannot answer the client: {e}"))?;
    let slave = pty.map(|(master, slave)| {
        drop(master);
        slave
    });

    // SAFETY: the helper is single-threaded (forked from the single-threaded monitor).
    match unsafe { sys::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            let code = command(spec, req, slave, stdio, notify_channel);
            sys::exit_now(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(slave);
            drop(stdio);
            let _ = sys::forward_signals_to(child.as_raw());
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(ExitInfo::Exited(code).code()),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitInfo::Signaled(sig as i32).code()),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("waitpid: {e}")),
                }
            }
        }
    }
}

/// Opens a pty in the container's devpts; returns (master, slave).
fn open_pty(req: &ExecRequest) -> Result<(OwnedFd, OwnedFd), String> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot open /dev/ptmx in the container: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let master: OwnedFd = master.into();
    let slave = sys::open_pty_peer(master.as_fd()).map_err(|e| format!("cannot open the pty's slave: {e}"))?;
    let _ = sys::set_window_size(master.as_fd(), req.rows.max(1), req.cols.max(1));
    Ok((master, slave))
}

/// The command's process: stdio, session, ids, cwd, restrictions, exec. Returns an exit code
/// only on failure.
fn command(
    spec: &ContainerSpec,
    req: &ExecRequest,
    slave: Option<OwnedFd>,
    stdio: Vec<OwnedFd>,
    notify_channel: Option<OwnedFd>,
) -> i32 {
    // If the helper is killed, the command goes with it rather than lingering unwaited.
    let _ = sys::set_pdeathsig(libc::SIGKILL);
    let _ = nix::unistd::setsid();
    let io_ok = match &slave {
        Some(tty) => sys::set_controlling_tty(tty.as_fd()).is_ok() && dup_stdio(tty.as_fd(), tty.as_fd(), tty.as_fd()),
        None => dup_stdio(stdio[0].as_fd(), stdio[1].as_fd(), stdio[2].as_fd()),
    };
    drop(slave);
    drop(stdio);
    if !io_ok {
        return EXIT_CANNOT_EXEC;
    }
    match exec_command(spec, req, notify_channel) {
        Ok(never) => match never {},
        Err((code, msg)) => {
            eprintln!("corral exec: {msg}");
            code
        }
    }
}

fn dup_stdio(stdin: BorrowedFd<'_>, stdout: BorrowedFd<'_>, stderr: BorrowedFd<'_>) -> bool {
    nix::unistd::dup2_stdin(stdin).is_ok()
        && nix::unistd::dup2_stdout(stdout).is_ok()
        && nix::unistd::dup2_stderr(stderr).is_ok()
}

fn exec_command(
    spec: &ContainerSpec,
    req: &ExecRequest,
    notify_channel: Option<OwnedFd>,
) -> Result<std::convert::Infallible, (i32, String)> {
    let fail = |msg: String| (EXIT_CANNOT_EXEC, msg);
    let groups = if req.gid == 0 {
        vec![]
    } else {
        vec![Gid::from_raw(req.gid)]
    };
    nix::unistd::setgroups(&groups).map_err(|e| fail(format!("setgroups: {e}")))?;
    let home = home_of(req.uid);
    let cwd = req
        .cwd
        .clone()
        .unwrap_or_else(|| home.clone().unwrap_or_else(|| "/".into()));
    caps::restrict(&spec.cap_drop).map_err(fail)?;
    // The filter goes on while still root in the namespace: without CAP_SYS_ADMIN the kernel
    // would demand no_new_privs, which would break setuid programs the command runs. Its
    // notify fd, when interception is on, goes to the monitor like init's.
    let notify = seccomp::install(&spec.seccomp).map_err(|e| fail(e.to_string()))?;
    if let (Some(fd), Some(channel)) = (&notify, notify_channel) {
        packet::send_bytes(channel.as_fd(), b"seccomp", &[fd.as_raw_fd()])
            .map_err(|e| fail(format!("cannot hand the seccomp listener to the monitor: {e}")))?;
    }
    drop(notify);
    setresgid(Gid::from_raw(req.gid), Gid::from_raw(req.gid), Gid::from_raw(req.gid))
        .map_err(|e| fail(format!("setresgid({}): {e}", req.gid)))?;
    setresuid(Uid::from_raw(req.uid), Uid::from_raw(req.uid), Uid::from_raw(req.uid))
        .map_err(|e| fail(format!("setresuid({}): {e}", req.uid)))?;
    nix::unistd::chdir(cwd.as_str()).map_err(|e| fail(format!("cannot change directory to {cwd}: {e}")))?;

    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v));
    };
    set("PATH", DEFAULT_PATH.into());
    set("HOME", home.unwrap_or_else(|| "/".into()));
    set("LANG", "C.UTF-8".into());
    if req.tty {
        set("TERM", "xterm".into());
    }
    for (k, v) in &req.env {
        set(k, v.clone());
    }
    let env: Vec<CString> = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| fail("the environment contains a NUL byte".into()))?;
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| fail("the command contains a NUL byte".into()))?;
    // Search the PATH of the command's environment (not the monitor's), as a shell would.
    let path_var = env_path(&env);
    let program = find_in_path(&req.argv[0], &path_var)
        .ok_or_else(|| (EXIT_NOT_FOUND, format!("{:?}: command not found", req.argv[0])))?;
    let program = CString::new(program).map_err(|_| fail("the command contains a NUL byte".into()))?;
    let e = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    let code = if e == nix::errno::Errno::ENOENT {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXEC
    };
    Err((code, format!("cannot execute {:?}: {e}", req.argv[0])))
}

fn env_path(env: &[CString]) -> String {
    env.iter()
        .find_map(|e| {
            e.to_str()
                .ok()
                .and_then(|s| s.strip_prefix("PATH="))
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

/// `name` itself if it has a slash, else the first executable `dir/name` on `path`.
fn find_in_path(name: &str, path: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(name.to_string());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{name}"))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The home directory of `uid` from the container's /etc/passwd.
fn home_of(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
    })
}
