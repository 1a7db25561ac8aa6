//! Lays out the release `corrald`'s code by use: the functions that a daemon runs (start-up,
//! the API, container start and exec), listed in `symbol-order.txt`, go first and together in
//! the binary's text. The kernel maps a binary's code 64 KiB at a time around each page fault,
//! so scattered hot code kept most of the 19 MB text resident; packed, a fresh daemon's RSS
//! is about half (16.5 → 8.8 MiB). `scripts/gen-symbol-order.sh` makes the list. The names
//! carry hashes of each crate's build metadata: a list gone stale (new dependencies, a new
//! toolchain) costs nothing but the gain, since names that are not in the binary are skipped.
//! `CORRAL_SYMBOL_ORDER=0` links without it.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("symbol-order.txt");
    // The list is read by the linker, not watched here: a rerun of this script rebuilds the
    // whole crate, where a new list needs only a relink (gen-symbol-order.sh touches main.rs).
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CORRAL_SYMBOL_ORDER");
    let wanted = env::var("PROFILE").as_deref() == Ok("release")
        && env::var("CORRAL_SYMBOL_ORDER").as_deref() != Ok("0")
        && order.is_file()
        && links_with_lld();
    if wanted {
        let arg = "cargo:rustc-link-arg-bin=corrald=-Wl";
        println!("{arg},--symbol-ordering-file={}", order.display());
        println!("{arg},--no-warn-symbol-ordering");
    }
}

/// Whether the final link is done by LLD, the only linker here that reads an ordering file:
/// rustc links x86_64 Linux binaries with its own LLD since 1.90, unless told otherwise.
fn links_with_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
