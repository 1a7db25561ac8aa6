//! The btrfs ioctls on the hot paths of snapshots and restores, each of which would otherwise
//! start the `btrfs` tool (5–10 ms a time): snapshot create (`BTRFS_IOC_SNAP_CREATE_V2`),
//! subvolume delete (`BTRFS_IOC_SNAP_DESTROY`), and whether a subvolume has subvolumes nested
//! in it (`BTRFS_IOC_GET_SUBVOL_ROOTREF`); and for migrations, a subvolume's received identity
//! (`BTRFS_IOC_SET_RECEIVED_SUBVOL`) and read-only flag (`BTRFS_IOC_SUBVOL_{GET,SET}FLAGS`). The
//! only `unsafe` of the crate.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const MAGIC: u8 = 0x94;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args` (4096 bytes).
#[repr(C)]
pub struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2` (4096 bytes; the size/qgroup union unused).
#[repr(C)]
pub struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_get_subvol_rootref_args` (4096 bytes).
#[repr(C)]
pub struct RootrefArgs {
    min_treeid: u64,
    rootref: [[u64; 2]; 255],
    num_items: u8,
    align: [u8; 7],
}

/// `struct btrfs_ioctl_received_subvol_args` (200 bytes; each `btrfs_ioctl_timespec` is a u64
/// and a u32, padded to 16 bytes).
#[repr(C)]
pub struct ReceivedSubvolArgs {
    uuid: [u8; 16],
    stransid: u64,
    rtransid: u64,
    stime: [u64; 2],
    rtime: [u64; 2],
    flags: u64,
    reserved: [u64; 16],
}

const _: () = assert!(std::mem::size_of::<ReceivedSubvolArgs>() == 200);
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<RootrefArgs>() == 4096);

nix::ioctl_write_ptr!(snap_destroy, MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(snap_create_v2, MAGIC, 23, VolArgsV2);
nix::ioctl_readwrite!(get_subvol_rootref, MAGIC, 61, RootrefArgs);
nix::ioctl_read!(subvol_getflags, MAGIC, 25, u64);
nix::ioctl_write_ptr!(subvol_setflags, MAGIC, 26, u64);
nix::ioctl_readwrite!(set_received_subvol, MAGIC, 37, ReceivedSubvolArgs);

/// The directory holding `path` (opened) and `path`'s last component, checked to fit `max`.
fn parent_and_name(path: &Path, max: usize) -> io::Result<(File, Vec<u8>)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no name", path.display())))?
        .as_bytes()
        .to_vec();
    if name.len() >= max || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: the name is too long for a subvolume", path.display()),
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((File::open(parent)?, name))
}

/// Snapshots the subvolume `src` as `dst` (its parent directory must exist), read-only if
/// asked. Subvolumes nested in `src` are not part of it (they show as empty directories).
pub fn snapshot(src: &Path, dst: &Path, readonly: bool) -> io::Result<()> {
    let source = File::open(src)?;
    let (parent, name) = parent_and_name(dst, 4040)?;
    let mut args = VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if readonly { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    args.name[..name.len()].copy_from_slice(&name);
    // SAFETY: `parent` is an open directory and `args` a fully initialised struct of the size
    // the request encodes, NUL-terminated name included; the kernel only reads it, during the
    // call, and `source` (whose fd it holds) outlives the call.
    unsafe { snap_create_v2(parent.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Deletes the subvolume at `path` (read-only or not). A subvolume with subvolumes nested in
/// it is refused (`ENOTEMPTY`).
pub fn destroy(path: &Path) -> io::Result<()> {
    let (parent, name) = parent_and_name(path, 4088)?;
    let mut args = VolArgs { fd: 0, name: [0; 4088] };
    args.name[..name.len()].copy_from_slice(&name);
    // SAFETY: `parent` is an open directory and `args` a fully initialised struct of the size
    // the request encodes, NUL-terminated name included; the kernel only reads it during the call.
    unsafe { snap_destroy(parent.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Whether subvolumes are nested directly in the subvolume at `path`.
pub fn has_nested(path: &Path) -> io::Result<bool> {
    let dir = File::open(path)?;
    let mut args = RootrefArgs {
        min_treeid: 0,
        rootref: [[0; 2]; 255],
        num_items: 0,
        align: [0; 7],
    };
    // SAFETY: `dir` is an open directory and `args` a fully initialised struct of the size the
    // request encodes, which the kernel reads and fills during the call only.
    match unsafe { get_subvol_rootref(dir.as_raw_fd(), &mut args) } {
        Ok(_) => Ok(args.num_items > 0),
        // More than fit in one answer: there are some.
        Err(nix::errno::Errno::EOVERFLOW) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Gives the (writable) subvolume at `path` the identity of a received one: `uuid` as its
/// received UUID, `stransid` as the sender's transaction. `btrfs receive` finds the parent of an
/// incremental stream by it.
pub fn set_received(path: &Path, uuid: [u8; 16], stransid: u64) -> io::Result<()> {
    let dir = File::open(path)?;
    let mut args = ReceivedSubvolArgs {
        uuid,
        stransid,
        rtransid: 0,
        stime: [0; 2],
        rtime: [0; 2],
        flags: 0,
        reserved: [0; 16],
    };
    // SAFETY: `dir` is an open directory and `args` a fully initialised struct of the size the
    // request encodes, which the kernel reads and fills during the call only.
    unsafe { set_received_subvol(dir.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Makes the subvolume at `path` read-only or writable (its other flags kept).
pub fn set_readonly(path: &Path, readonly: bool) -> io::Result<()> {
    let dir = File::open(path)?;
    let mut flags = 0u64;
    // SAFETY: `dir` is an open directory and `flags` a u64, which the kernel fills during the
    // call only.
    unsafe { subvol_getflags(dir.as_raw_fd(), &mut flags) }.map_err(io::Error::from)?;
    let flags = if readonly {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    // SAFETY: as above; the kernel only reads `flags`, during the call.
    unsafe { subvol_setflags(dir.as_raw_fd(), &flags) }.map_err(io::Error::from)?;
    Ok(())
}
