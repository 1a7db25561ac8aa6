//! The fast paths of images, by behaviour (never by timing): an import or a publish returns once
//! the image file is checked and stored, the pool's volume of it is unpacked in the background,
//! a launch that arrives first waits for that unpack (and gets a whole, working rootfs), a bad
//! image is still refused at import, and a deleted image leaves nothing behind. Root only.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// The finished (not dot-named) entries of a directory.
fn finished(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Dot-named (partial, staging) entries of a directory.
fn partial(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn pool(d: &TestDaemon) -> PathBuf {
    d.dir.join("storage-pools/default")
}

/// Waits until the image volume and one spare copy of `fp` are there.
fn wait_unpacked(d: &TestDaemon, fp: &str) {
    let (image, spares) = (pool(d).join("images").join(fp), pool(d).join("spares").join(fp));
    let done = wait_for(Duration::from_secs(60), || {
        (image.join("rootfs/bin/busybox").is_file()
            && image.join("metadata.yaml").is_file()
            && !finished(&spares).is_empty())
        .then_some(())
    });
    assert!(
        done.is_some(),
        "image volume and spare of {fp}: {:?}",
        finished(&spares)
    );
}

#[test]
fn a_launch_right_after_the_import_gets_a_whole_rootfs_and_the_pool_catches_up() {
    let test = "a_launch_right_after_the_import_gets_a_whole_rootfs_and_the_pool_catches_up";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("speed-launch");
    let fp = d.import(&image, "bb");
    // At once: the launch waits for (or makes) the unpack, never a half tree.
    d.launch("l1", "bb");
    let rootfs = pool(&d).join("containers/l1/rootfs");
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(pool(&d).join("containers/l1/metadata.yaml").is_file());
    let (code, out) = d.sh("l1", "test \"$(hostname)\" = l1 && busybox true && echo ok");
    assert_eq!((code, out.trim()), (0, "ok"));
    // Then the image volume and a spare copy, and nothing half-made.
    wait_unpacked(&d, &fp);
    assert!(
        partial(&pool(&d).join("images")).is_empty(),
        "{:?}",
        partial(&pool(&d).join("images"))
    );
    // The image shows as a volume of the pool.
    let volumes = d.get("/1.0/storage-pools/default/volumes").to_string();
    assert!(
        volumes.contains(&format!("/1.0/storage-pools/default/volumes/image/{fp}")),
        "{volumes}"
    );
    // A second launch takes the spare.
    d.launch("l2", "bb");
    assert!(pool(&d).join("containers/l2/rootfs/bin/busybox").is_file());
    for n in ["l1", "l2"] {
        d.op_ok(
            "PUT",
            &format!("/1.0/instances/{n}/state"),
            r#"{"action":"stop","force":true}"#,
        );
    }
}

#[test]
fn a_published_image_is_stored_at_once_and_launches_with_what_was_published() {
    let test = "a_published_image_is_stored_at_once_and_launches_with_what_was_published";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("speed-publish");
    d.import(&image, "bb");
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"src","source":{"type":"image","alias":"bb"}}"#,
    );
    std::fs::write(pool(&d).join("containers/src/rootfs/published-marker"), "here\n").unwrap();
    let op = d.op_ok(
        "POST",
        "/1.0/images",
        r#"{"source":{"type":"instance","name":"src"},"aliases":[{"name":"pub"}]}"#,
    );
    let fp = op["metadata"]["fingerprint"].as_str().unwrap().to_string();
    // The stored file is the image: its sha256 is the fingerprint.
    let file = d.dir.join("images").join(&fp);
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&fp), "{file:?}");
    assert_eq!(
        d.get(&format!("/1.0/images/{fp}"))["size"],
        std::fs::metadata(&file).unwrap().len()
    );
    d.launch("p1", "pub");
    let (code, out) = d.sh("p1", "cat /published-marker");
    assert_eq!((code, out.trim()), (0, "here"));
    let image_volume = pool(&d).join("images").join(&fp);
    let made = wait_for(Duration::from_secs(60), || {
        image_volume.join("rootfs/published-marker").is_file().then_some(())
    });
    assert!(
        made.is_some(),
        "the published image's volume is unpacked in the background"
    );
    d.op_ok("PUT", "/1.0/instances/p1/state", r#"{"action":"stop","force":true}"#);
}

/// A unified image whose rootfs has an entry `rootfs/../../NAME`.
fn traversal_image(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join("evil.tar");
    let script = format!(
        r#"
import io, tarfile, time
with tarfile.open({out:?}, "w", format=tarfile.GNU_FORMAT) as t:
    def add(name, data=None, kind=tarfile.REGTYPE):
        i = tarfile.TarInfo(name); i.type = kind; i.mtime = int(time.time())
        if kind == tarfile.DIRTYPE:
            i.mode = 0o755; t.addfile(i)
        else:
            i.size = len(data); t.addfile(i, io.BytesIO(data))
    add("metadata.yaml", b"architecture: x86_64\ncreation_date: 1700000000\n")
    add("rootfs", kind=tarfile.DIRTYPE)
    add("rootfs/ok", b"fine\n")
    add("rootfs/../../{name}", b"escaped\n")
"#,
        out = out.display().to_string()
    );
    let st = Command::new("python3").args(["-c", &script]).status().unwrap();
    assert!(st.success());
    out
}

#[test]
fn an_image_with_a_parent_directory_entry_is_refused_at_import_and_nothing_stays() {
    let test = "an_image_with_a_parent_directory_entry_is_refused_at_import_and_nothing_stays";
    if skip_unless_root(test) {
        return;
    }
    let d = TestDaemon::start("speed-evil");
    let work = d.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let name = unique("escaped");
    let evil = traversal_image(&work, &name);
    let a = d.call("POST", "/1.0/images", &["X-LXD-aliases: evil"], Body::File(&evil));
    let op = d.wait(&a);
    assert_eq!(op["status"], "Failure", "{op}");
    let err = op["err"].as_str().unwrap_or_default();
    assert!(err.contains("Invalid image") && err.contains(".."), "{err}");
    assert_eq!(d.get("/1.0/images"), serde_json::json!([]));
    assert_eq!(finished(&d.dir.join("images")), Vec::<String>::new());
    assert!(
        finished(&d.dir.join("tmp")).is_empty(),
        "{:?}",
        finished(&d.dir.join("tmp"))
    );
    // Nothing was written above the daemon's directories.
    for base in [
        d.dir.clone(),
        d.dir.join("storage-pools"),
        d.dir.join("storage-pools/default"),
    ] {
        assert!(!base.join(&name).exists(), "{name} escaped into {base:?}");
    }
}

#[test]
fn an_image_deleted_while_it_unpacks_leaves_no_volume_and_no_spare() {
    let test = "an_image_deleted_while_it_unpacks_leaves_no_volume_and_no_spare";
    if skip_unless_root(test) {
        return;
    }
    let Some(image) = busybox_image(test) else { return };
    let d = TestDaemon::start("speed-delete");
    let fp = d.import(&image, "bb");
    d.op_ok("DELETE", &format!("/1.0/images/{fp}"), "");
    let (image_volume, spares) = (pool(&d).join("images").join(&fp), pool(&d).join("spares").join(&fp));
    let gone = wait_for(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        (!image_volume.exists() && !spares.exists()).then_some(())
    });
    assert!(
        gone.is_some(),
        "left: volume {} spares {:?}",
        image_volume.exists(),
        finished(&spares)
    );
    // And it stays gone once the background work is over.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!image_volume.exists() && !spares.exists());
    // A launch of the deleted image is refused.
    let a = d.call(
        "POST",
        "/1.0/instances",
        &[],
        Body::Json(r#"{"name":"x1","source":{"type":"image","alias":"bb"}}"#),
    );
    if a.code == 202 {
        let op = d.wait(&a);
        assert_ne!(op["status"], "Success", "{op}");
    } else {
        assert_eq!(a.code, 404, "{}", String::from_utf8_lossy(&a.body));
    }
    assert!(!pool(&d).join("containers/x1").exists());
}

/// The dot-named entries under the pool's `images/` and `spares/<fp>/` (unpacks under way).
fn unpacks_under_way(d: &TestDaemon, fp: &str) -> Vec<PathBuf> {
    let (images, spares) = (pool(d).join("images"), pool(d).join("spares").join(fp));
    let mut out: Vec<PathBuf> = partial(&images).into_iter().map(|n| images.join(n)).collect();
    out.extend(partial(&spares).into_iter().map(|n| spares.join(n)));
    out
}

#[test]
fn an_unpack_cut_by_a_crash_starts_again_with_the_daemon_and_a_launch_waits_for_it() {
    let test = "an_unpack_cut_by_a_crash_starts_again_with_the_daemon_and_a_launch_waits_for_it";
    if skip_unless_root(test) {
        return;
    }
    // Debian: big enough (about 500 MB) to be caught half-way.
    let Some(image) = packed_image(test, "bookworm") else {
        return;
    };
    let mut d = TestDaemon::start("speed-resume");
    let fp = d.import(&image, "deb");
    let volume = pool(&d).join("images").join(&fp);
    let under_way = wait_for(Duration::from_secs(60), || {
        let found = unpacks_under_way(&d, &fp);
        let started = found
            .iter()
            .any(|p| std::fs::read_dir(p).is_ok_and(|mut rd| rd.next().is_some()));
        started.then_some(found)
    })
    .expect("the background unpack did not start");
    d.crash();
    assert!(
        !volume.exists(),
        "the unpack ended before the crash: the test image is too small"
    );
    assert!(
        under_way.iter().any(|p| p.exists()),
        "a crash leaves the half-made tree"
    );

    // The new daemon removes the half-made tree and unpacks again, by itself.
    d.spawn();
    for p in &under_way {
        assert!(
            !p.exists() || p.starts_with(pool(&d).join("images")),
            "left: {}",
            p.display()
        );
    }
    let again = wait_for(Duration::from_secs(60), || {
        (!unpacks_under_way(&d, &fp).is_empty() || volume.exists()).then_some(())
    });
    assert!(again.is_some(), "the unpack did not start again after the restart");
    // A launch now waits for that unpack and gets the whole tree.
    d.op_ok(
        "POST",
        "/1.0/instances",
        r#"{"name":"r1","source":{"type":"image","alias":"deb"}}"#,
    );
    let rootfs = pool(&d).join("containers/r1/rootfs");
    assert!(rootfs.join("usr/bin/dpkg").is_file());
    let os = std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap_or_default();
    assert!(os.contains("bookworm"), "{os}");
    let ok = wait_for(Duration::from_secs(300), || {
        (volume.join("rootfs/usr/bin/dpkg").is_file() && unpacks_under_way(&d, &fp).is_empty()).then_some(())
    });
    assert!(ok.is_some(), "left: {:?}", unpacks_under_way(&d, &fp));
}
