//! `corral console NAME [--show-log]`: attach to an instance's console (`lxc console`), or
//! print its log.
//!
//! Attaching is `POST /1.0/instances/NAME/console`: a websocket operation with the secrets of
//! `0` (the terminal, both ways) and `control` (window size). The local terminal is put in raw
//! mode (with stty(1), restored whatever happens); `ctrl+a q` detaches, `ctrl+a a` sends a
//! `ctrl+a`. The console ends when we detach or the instance stops.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use corral_api::{InstanceConsoleControl, InstanceConsolePost, Operation};
use corral_client::{decode, Client, WebSocket};

use crate::instances::instance_path;

#[derive(Args)]
pub struct ConsoleArgs {
    /// The instance
    pub name: String,
    /// Print the console log instead of attaching
    #[arg(long)]
    pub show_log: bool,
}

pub fn console(c: &Client, a: ConsoleArgs) -> Result<()> {
    let path = format!("{}/console", instance_path(&a.name)?);
    if a.show_log {
        let resp = c.raw("GET", &path, &[], None)?;
        if resp.status != 200 {
            decode(resp)?;
            return Ok(());
        }
        io::stdout().write_all(&resp.body)?;
        io::stdout().flush()?;
        return Ok(());
    }
    attach(c, &path)
}

fn attach(c: &Client, path: &str) -> Result<()> {
    let (width, height) = terminal_size().unwrap_or((80, 24));
    let post = InstanceConsolePost {
        width: i64::from(width),
        height: i64::from(height),
        kind: "console".into(),
    };
    let resp = c.post(path, &post)?;
    let op: Operation =
        serde_json::from_value(resp.metadata.clone()).context("console answered without an operation")?;
    let op_ref = if resp.operation.is_empty() {
        op.id.clone()
    } else {
        resp.operation.clone()
    };
    let fds: BTreeMap<String, String> =
        serde_json::from_value(op.metadata["fds"].clone()).context("console operation without websocket secrets")?;
    let secret = |n: &str| {
        fds.get(n)
            .cloned()
            .ok_or_else(|| anyhow!("console operation has no websocket {n:?}"))
    };
    let mut control = c.websocket(&op_ref, &secret("control")?)?;
    let term = c.websocket(&op_ref, &secret("0")?)?;
    send_resize(&mut control, width, height);

    println!("To detach from the console, press: <ctrl>+a q");
    let raw = RawTerminal::enter();
    // One websocket, read and written from two threads: reads time out so writes get a turn.
    term.get_ref().set_read_timeout(Some(Duration::from_millis(50)))?;
    let term = Arc::new(Mutex::new(term));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    spawn_output(term.clone(), done_tx.clone());
    spawn_input(term.clone(), done_tx);
    let _ = done_rx.recv();
    if let Ok(mut ws) = term.lock() {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    drop(raw);
    let _ = control.close(None);
    let _ = control.flush();
    let _ = c.wait_operation(&op_ref, Some(Duration::from_secs(5)));
    println!();
    Ok(())
}

/// Console output to our stdout, until the daemon closes the websocket.
fn spawn_output(term: Arc<Mutex<WebSocket>>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut out = io::stdout();
        loop {
            let msg = {
                let Ok(mut ws) = term.lock() else { break };
                ws.read()
            };
            match msg {
                Ok(m) if m.is_binary() || m.is_text() => {
                    if out.write_all(&m.into_data()).and_then(|_| out.flush()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) if timed_out(&e) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// Whether a websocket error is only the read timeout.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|e| matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Our stdin to the console; `ctrl+a q` detaches. Detached: a read from a terminal may block
/// until we exit.
fn spawn_input(term: Arc<Mutex<WebSocket>>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = [0u8; 4096];
        let mut escape = false;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut data = Vec::with_capacity(n + 1);
            for &b in &buf[..n] {
                if escape {
                    escape = false;
                    match b {
                        b'q' => {
                            let _ = done.send(());
                            return;
                        }
                        b'a' | 0x01 => data.push(0x01),
                        other => data.extend_from_slice(&[0x01, other]),
                    }
                } else if b == 0x01 {
                    escape = true;
                } else {
                    data.push(b);
                }
            }
            if data.is_empty() {
                continue;
            }
            let Ok(mut ws) = term.lock() else { break };
            if ws.send(data.into()).is_err() {
                break;
            }
        }
        // End of input (not a terminal): the console stays until the instance stops.
    });
}

fn send_resize(control: &mut WebSocket, width: u16, height: u16) {
    let msg = InstanceConsoleControl {
        command: corral_api::instance::exec_control::WINDOW_RESIZE.into(),
        args: BTreeMap::from([
            ("width".to_string(), width.to_string()),
            ("height".to_string(), height.to_string()),
        ]),
    };
    if let Ok(text) = serde_json::to_string(&msg) {
        let _ = control.send(text.into());
    }
}

/// The terminal's size (columns, rows), from `stty size`.
fn terminal_size() -> Option<(u16, u16)> {
    if !io::stdin().is_terminal() {
        return None;
    }
    // `output()` would give stty a null stdin: the terminal must be its stdin.
    let out = Command::new("stty")
        .arg("size")
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    let (rows, cols) = (it.next()??, it.next()??);
    (rows > 0 && cols > 0).then_some((cols, rows))
}

/// The local terminal in raw mode (through stty), restored on drop (also when unwinding).
struct RawTerminal {
    saved: Option<String>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        if !io::stdin().is_terminal() {
            return RawTerminal { saved: None };
        }
        let saved = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if saved.is_some() {
            let _ = Command::new("stty").args(["raw", "-echo"]).status();
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = Command::new("stty").arg(saved).status();
        }
    }
}
