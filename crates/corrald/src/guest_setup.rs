//! Files the daemon puts into a guest before it starts, for what the instance's config asks.
//!
//! `migration.stateful=true`: systemd's services get no private UTS or network namespace
//! (`ProtectHostname=no`, `PrivateNetwork=no`, in a drop-in for every service), because CRIU
//! cannot checkpoint a container with nested UTS namespaces (systemd-logind, localed and
//! timedated ask for one) nor, with the network namespace emptied for the NICs to be plugged
//! again, a second network namespace (systemd-hostnamed's). The trade-off: those services could
//! change the container's own hostname and reach its network (never the host's).
//! With the key unset again the drop-in goes at the next start. Written through the
//! instance's root with `openat2(RESOLVE_IN_ROOT)`: a symlink in the guest cannot send the write
//! to the host.

use std::io::Write;
use std::path::Path;

use crate::files::{FsError, InstancePath, InstanceRoot, Kind, WriteRequest};

const DROP_IN_DIR: &str = "/etc/systemd/system/service.d";
const DROP_IN: &str = "/etc/systemd/system/service.d/zz-corral-checkpoint.conf";
const CONTENT: &str = "# Written by Corral for migration.stateful=true: CRIU cannot checkpoint nested UTS \
                       namespaces, nor a second network namespace.\n[Service]\nProtectHostname=no\nPrivateNetwork=no\n";

fn request(kind: Kind, mode: u32) -> WriteRequest {
    WriteRequest {
        kind,
        append: false,
        uid: Some(0),
        gid: Some(0),
        mode: Some(mode),
        modify_uid: false,
        modify_gid: false,
        modify_mode: false,
    }
}

fn path(p: &str) -> Result<InstancePath, FsError> {
    InstancePath::parse(p)
}

/// Puts the drop-in in (or takes it out) as `stateful` says; a guest without systemd is left
/// alone.
pub fn prepare_checkpointable(rootfs: &Path, stateful: bool) -> Result<(), FsError> {
    let root = InstanceRoot::open(rootfs)?;
    let has_systemd = root
        .stat(&path("/etc/systemd/system")?)
        .is_ok_and(|m| m.kind == Kind::Directory);
    if !has_systemd {
        return Ok(());
    }
    let drop_in = path(DROP_IN)?;
    if !stateful {
        if root.stat(&drop_in).is_ok() {
            root.remove(&drop_in)?;
        }
        return Ok(());
    }
    let dir = path(DROP_IN_DIR)?;
    if root.stat(&dir).is_err() {
        root.mkdir(&dir, &request(Kind::Directory, 0o755))?;
    }
    let mut f = root.open_for_write(&drop_in, &request(Kind::File, 0o644))?;
    f.write_all(CONTENT.as_bytes()).map_err(|e| FsError {
        code: 500,
        message: format!("cannot write {DROP_IN}: {e}"),
    })
}
