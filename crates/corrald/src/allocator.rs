//! How the daemon's allocator (glibc malloc) gives memory back to the system.
//!
//! By default glibc raises its mmap threshold each time a block it had mapped is freed (up to
//! 32 MiB on 64-bit), and its trim threshold to twice that. A daemon that once freed a 1 MiB
//! buffer then serves every later buffer of that size from a thread's arena, and an arena's top
//! is given back only past the raised trim threshold (`malloc_trim` never trims a thread
//! arena's top). After an image import and a launch, corrald kept about 10 MiB of such freed
//! memory resident (11.8 MiB anonymous against 1.4 MiB fresh; `malloc_trim(0)` gave back 0.35).
//! Fixed thresholds stop the drift: large buffers get their own mappings, unmapped at free, and
//! arenas are trimmed past 256 KiB. Fewer arenas (one per core rather than eight) hold less
//! half-used memory between the daemon's bursts of blocking work.

/// Blocks from this size up are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 256 * 1024;
/// An arena's free top beyond this is given back.
const TRIM_THRESHOLD: i32 = 256 * 1024;

/// Sets the thresholds above; call once, first thing in `main`, before other threads exist.
pub fn return_freed_memory() {
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) as i32;
    for (param, value) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_ARENA_MAX, arenas),
    ] {
        // SAFETY: mallopt only changes malloc's tuning parameters; it takes two integers and
        // is called before any other thread runs, so no allocation is in flight.
        let _ = unsafe { libc::mallopt(param, value) };
    }
}
