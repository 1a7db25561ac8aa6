//! Reading and writing cgroupfs files, creating and removing cgroup directories.
//!
//! Also the test seams (`hooks`), which compile to nothing outside tests.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use tracing::debug;

use super::{CgroupError, Result, POLL};

pub(super) fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_trimmed(path: &Path) -> Result<String> {
    Ok(read_string(path)?.trim().to_string())
}

/// `None` if the file does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(super) fn parse_u64(path: &Path, value: String) -> Result<u64> {
    value.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        value,
        expected: "an unsigned integer",
    })
}

pub(super) fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, read_trimmed(path)?)
}

pub(super) fn read_u64_opt(path: &Path) -> Result<Option<u64>> {
    read_optional(path)?.map(|v| parse_u64(path, v)).transpose()
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `cgroup.events`): lines `key value`.
pub(super) fn keyed_u64(path: &Path, key: &str) -> Result<Option<u64>> {
    let text = read_string(path)?;
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| parse_u64(path, v.trim().to_string()))
        .transpose()
}

/// One `write(2)` of `value` (a cgroup file takes one value per write). An empty value is sent
/// as a newline, which is how cgroupfs is told "empty".
pub(super) fn write_value(path: &Path, value: &str) -> Result<()> {
    let bytes = if value.is_empty() {
        b"\n".as_slice()
    } else {
        value.as_bytes()
    };
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_string(),
            source,
        })?;
    debug!(path = %path.display(), value, "cgroup write");
    hooks::record_write(path, value);
    Ok(())
}

pub(super) fn ensure_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {
            debug!(path = %path.display(), "cgroup created");
            hooks::on_mkdir(path);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(super) fn create_new_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {
            debug!(path = %path.display(), "cgroup created");
            hooks::on_mkdir(path);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::Exists { path: path.to_owned() }),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| CgroupError::Chown {
        path: path.to_owned(),
        uid,
        gid,
        source,
    })
}

/// Adds the pids of `dir` and of every cgroup below it. Sub-cgroups that vanish meanwhile
/// (removed by the container) are skipped.
pub(super) fn collect_procs(dir: &Path, pids: &mut BTreeSet<i32>) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let text = read_string(&procs)?;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse().map_err(|_| CgroupError::Parse {
            path: procs.clone(),
            value: line.to_string(),
            expected: "one pid per line",
        })?;
        pids.insert(pid);
    }
    for sub in subdirs(dir)? {
        match collect_procs(&sub, pids) {
            Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

pub(super) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let read_err = |source| CgroupError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// rmdir `dir` after its sub-cgroups, depth first; retries EBUSY (a cgroup whose last process
/// is still exiting) until `deadline`. A missing directory is not an error.
pub(super) fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    let subs = match subdirs(dir) {
        Ok(subs) => subs,
        Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for sub in subs {
        remove_tree(&sub, deadline)?;
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => {
                debug!(dir = %dir.display(), "cgroup removed");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => thread::sleep(POLL),
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test seams: compiled to nothing outside tests.
// ---------------------------------------------------------------------------------------------

#[cfg(not(test))]
pub(super) mod hooks {
    use std::path::Path;

    pub fn record_write(_path: &Path, _value: &str) {}
    pub fn on_mkdir(_path: &Path) {}
    pub fn fake_bpf() -> bool {
        false
    }
}

/// Per-thread (so per-test) seams for the fake-filesystem tests: a log of every successful
/// write, files a fake "kernel" creates in each new directory, and a switch that records the
/// device filter instead of loading it.
#[cfg(test)]
pub(super) mod hooks {
    use std::cell::{Cell, RefCell};
    use std::fs;
    use std::path::{Path, PathBuf};

    /// (hierarchy root, files (name, content) that appear in every new cgroup below it)
    pub type Template = (PathBuf, Vec<(String, String)>);

    thread_local! {
        pub static WRITES: RefCell<Vec<(PathBuf, String)>> = const { RefCell::new(Vec::new()) };
        pub static TEMPLATES: RefCell<Vec<Template>> = const { RefCell::new(Vec::new()) };
        pub static FAKE_BPF: Cell<bool> = const { Cell::new(false) };
    }

    pub fn record_write(path: &Path, value: &str) {
        WRITES.with(|w| w.borrow_mut().push((path.to_owned(), value.to_string())));
    }

    pub fn on_mkdir(path: &Path) {
        TEMPLATES.with(|t| {
            let templates = t.borrow();
            let template = templates
                .iter()
                .filter(|(root, _)| path.starts_with(root))
                .max_by_key(|(root, _)| root.as_os_str().len());
            if let Some((_, files)) = template {
                for (name, content) in files {
                    fs::write(path.join(name), content).expect("fake kernel: create cgroup file");
                }
            }
        });
    }

    pub fn fake_bpf() -> bool {
        FAKE_BPF.with(Cell::get)
    }
}
