//! Compatibility with pylxd (Debian 12's python3-pylxd, 2.2.x): a Python script drives a real
//! corrald through pylxd on its unix socket (found through `LXD_DIR`, as pylxd does by default;
//! pylxd 2.2's `Client(endpoint=<socket path>)` only takes regular files, so it cannot name a
//! socket directly).
//!
//! pylxd 2.2 predates `client.instances`: it manages containers through `/1.0/containers` and
//! `client.containers`; newer pylxd through `/1.0/instances`. The script uses `instances` where
//! pylxd has it. Each step is reported on its own line (`OK step` or `FAIL step: request →
//! answer`), so a failure names the request pylxd made and what corrald said.
//!
//! Root only; skipped (failed under CORRAL_REQUIRED_TESTS=1) without pylxd and ws4py.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs `script` with pylxd pointed at this daemon (LXD_DIR), at most `limit`; its output.
fn pylxd(d: &TestDaemon, python: &Path, script: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let file = d.dir.join("pylxd-test.py");
    std::fs::write(&file, script).unwrap();
    let out_file = d.dir.join("pylxd-test.out");
    let mut child = Command::new(python)
        .arg("-W")
        .arg("ignore")
        .arg(&file)
        .args(args)
        .env("LXD_DIR", &d.dir)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = std::fs::read_to_string(&out_file).unwrap_or_default();
    if status.is_none() {
        out.push_str(&format!("(the script was killed after {limit:?})\n"));
    }
    (status.is_some_and(|s| s.success()), out)
}

/// Debian's python3 with pylxd and ws4py (not a pyenv or venv python first in PATH), or a skip.
fn python_with_pylxd(test: &str) -> Option<PathBuf> {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import pylxd, ws4py"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(PathBuf::from(python));
        }
    }
    skip(test, "needs pylxd and ws4py (apt-get install python3-pylxd)");
    None
}

/// The steps, each reported as `OK name` or `FAIL name: ...` with the HTTP exchange when pylxd
/// raised an API error. argv[1] chooses the part: `read` or `lifecycle`.
const SCRIPT: &str = r#"
import os, signal, sys, traceback
import pylxd
from pylxd import exceptions

part = sys.argv[1]
failed = []

class StepTimeout(Exception):
    pass

class Abort(Exception):
    """A step the rest depends on failed."""

def alarm(signum, frame):
    raise StepTimeout("no answer within 60 s")

signal.signal(signal.SIGALRM, alarm)

def explain(e):
    r = getattr(e, "response", None)
    if r is None:
        return "%s: %s" % (type(e).__name__, e)
    req = r.request
    body = req.body.decode() if isinstance(req.body, bytes) else req.body
    return "%s %s %s -> HTTP %s %s" % (
        req.method, req.path_url, body or "", r.status_code, r.text.strip()[:400])

def step(name, f, stop=False):
    signal.alarm(60)
    try:
        r = f()
        signal.alarm(0)
        print("OK %s %s" % (name, "" if r is None else repr(r)[:200]))
        return r
    except BaseException as e:
        signal.alarm(0)
        failed.append(name)
        print("FAIL %s: %s" % (name, explain(e)))
        traceback.print_exc(file=sys.stdout)
        if stop:
            raise Abort(name)

def check(cond, what):
    if not cond:
        raise AssertionError(what)
    return what

def finish():
    print("RESULT", "ok" if not failed else "failed: " + ", ".join(failed))
    sys.stdout.flush()
    # Not sys.exit: a websocket thread pylxd left behind must not keep the process alive.
    os._exit(0 if not failed else 1)

def read():
    def images():
        imgs = client.images.all()
        check(len(imgs) == 1, "one image: %r" % imgs)
        img = imgs[0]
        check(len(img.fingerprint) == 64, "a sha256 fingerprint: %r" % img.fingerprint)
        check([a["name"] for a in img.aliases] == ["busybox"], "alias busybox: %r" % img.aliases)
        same = client.images.get(img.fingerprint)
        check(same.architecture == img.architecture, "get by fingerprint")
        by_alias = client.images.get_by_alias("busybox")
        check(by_alias.fingerprint == img.fingerprint, "get_by_alias")
        return img.fingerprint
    step("images", images)

    def default_profile():
        p = client.profiles.get("default")
        check(p.name == "default", "name")
        check(p.devices["root"]["type"] == "disk", "root disk: %r" % p.devices)
        check(p.used_by == [], "used_by: %r" % p.used_by)
        return p.devices
    step("profiles.get(default)", default_profile)
    step("profiles.all", lambda: check(
        sorted(p.name for p in client.profiles.all()) == ["default"], "only default"))

    def profile_crud():
        p = client.profiles.create("web", config={"limits.memory": "256MiB"},
                                   devices={"data": {"type": "none"}})
        check(p.config == {"limits.memory": "256MiB"}, "created config: %r" % p.config)
        check(client.profiles.exists("web"), "exists")
        p.config["user.role"] = "web"
        p.description = "web servers"
        p.save()
        p = client.profiles.get("web")
        check(p.config == {"limits.memory": "256MiB", "user.role": "web"}, "saved: %r" % p.config)
        check(p.description == "web servers", "description")
        try:
            client.profiles.create("web")
            raise AssertionError("a second create of web was accepted")
        except exceptions.LXDAPIException as e:
            check(e.response.status_code == 409, "409 for a duplicate: %s" % explain(e))
        try:
            client.profiles.create("bad", config={"limits.memroy": "1GB"})
            raise AssertionError("an unknown key was accepted")
        except exceptions.LXDAPIException as e:
            check(e.response.status_code == 400 and "limits.memroy" in str(e), explain(e))
        p = p.rename("www")
        check(p.name == "www" and not client.profiles.exists("web"), "renamed")
        p.delete()
        check(not client.profiles.exists("www"), "deleted")
        try:
            client.profiles.get("default").delete()
            raise AssertionError("the default profile was deleted")
        except exceptions.LXDAPIException as e:
            check("default" in str(e), explain(e))
    step("profile create/save/rename/delete", profile_crud)

def lifecycle():
    # pylxd 2.2 has only `containers` (/1.0/containers); newer pylxd has `instances`.
    manager = getattr(client, "instances", None) or client.containers
    print("manager", "instances" if hasattr(client, "instances") else "containers")
    step("list", lambda: check([i.name for i in manager.all()] == [], "no instances"), stop=True)
    inst = step("create", lambda: manager.create(
        {"name": "py1", "source": {"type": "image", "alias": "busybox"}}, wait=True), stop=True)
    try:
        lifecycle_of(manager, inst)
    finally:
        def delete():
            inst.sync()
            if inst.status != "Stopped":
                inst.stop(force=True, wait=True)
            inst.delete(wait=True)
        step("delete", delete)
    step("list after delete", lambda: check([i.name for i in manager.all()] == [], "no instances"))

def lifecycle_of(manager, inst):
    step("start", lambda: inst.start(wait=True), stop=True)
    def running():
        inst.sync()
        return check(inst.status == "Running", "status %r" % inst.status)
    step("status", running)
    step("list running", lambda: check([i.name for i in manager.all()] == ["py1"], "py1 listed"))
    def execute():
        r = inst.execute(["echo", "hi"])
        check(r.exit_code == 0, "exit code %r" % (r.exit_code,))
        check(r.stdout == "hi\n", "stdout %r" % (r.stdout,))
        return r
    step("execute", execute)
    def execute_status():
        r = inst.execute(["sh", "-c", "echo oops >&2; exit 3"])
        check((r.exit_code, r.stderr) == (3, "oops\n"), "result %r" % (r,))
    step("execute exit code and stderr", execute_status)
    def used_by():
        u = client.profiles.get("default").used_by
        return check(u == ["/1.0/instances/py1"], "used_by %r" % u)
    step("profile used_by", used_by)
    def stop():
        inst.stop(wait=True)
        inst.sync()
        return check(inst.status == "Stopped", "status %r" % inst.status)
    step("stop", stop)

try:
    client = step("connect", lambda: pylxd.Client(), stop=True)
    print("pylxd", getattr(pylxd, "__version__", "?"))
    read() if part == "read" else lifecycle()
except Abort:
    pass
finish()
"#;

fn run(test: &str, part: &str) {
    let Some(python) = python_with_pylxd(test) else { return };
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start(&format!("pylxd-{part}"));
    d.import(&image, "busybox");
    let (ok, out) = pylxd(&d, &python, SCRIPT, &[part], Duration::from_secs(300));
    eprintln!("{out}");
    assert!(
        ok && out.contains("RESULT ok"),
        "pylxd ({part}) against corrald:\n{out}"
    );
}

#[test]
fn pylxd_reads_images_and_manages_profiles() {
    run("pylxd_reads_images_and_manages_profiles", "read");
}

#[test]
fn pylxd_creates_starts_execs_stops_and_deletes_an_instance() {
    run("pylxd_creates_starts_execs_stops_and_deletes_an_instance", "lifecycle");
}
