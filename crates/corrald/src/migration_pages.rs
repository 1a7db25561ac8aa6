//! Post-copy's page stream over the migration connection: CRIU's page-server protocol between
//! the source's lazy `criu dump` and the target's `criu lazy-pages`, carried on the operation's
//! third websocket (`criu`, named as in LXD's migration API) instead of a TCP connection between
//! the hosts. On each end criu gets one end of a socketpair (`--ps-socket`); [`pump`] relays the
//! other end and the websocket both ways from one thread (a dialed websocket is one TLS session,
//! which cannot be read and written from two threads), until either side ends.
//!
//! Frames: binary frames are the stream's bytes; a text frame `end` says the sender's criu
//! closed its side.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::migration::{Frame, Link};

/// How long one turn waits for the websocket: the added latency of a page fault, at most.
const TICK: Duration = Duration::from_millis(1);
const CHUNK: usize = 256 * 1024;
const END: &str = "end";

/// Relays `local` (criu's stream) and `link` both ways until criu closes `local` (then the
/// peer is told), the peer ends or goes, or `stop` is set. Returns the bytes relayed each way
/// (to the peer, from the peer).
///
/// When the peer ends, `local` is shut down only with `close_local_on_peer_end`. The dumping
/// side must not: to its criu the stream's end means "all served, stop the container", and the
/// peer's end comes as well when its restore failed; the caller knows which from the control
/// channel and ends the stream itself, or fails the dump ([`corral_runtime::checkpoint::PAGE_STREAM_ABORT`]).
pub fn pump(
    link: &mut dyn Link,
    local: &UnixStream,
    stop: &AtomicBool,
    close_local_on_peer_end: bool,
) -> io::Result<(u64, u64)> {
    let mut reader = local;
    let mut writer = local;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut buf = vec![0u8; CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match link.recv_timeout(TICK)? {
            Some(Frame::Binary(b)) => {
                got += b.len() as u64;
                if writer.write_all(&b).is_err() {
                    // criu went: what the peer sends is for no one.
                    let _ = link.send(Frame::Text(END.into()));
                    return Ok((sent, got));
                }
            }
            Some(Frame::Text(_)) | Some(Frame::Closed) => {
                if close_local_on_peer_end {
                    let _ = local.shutdown(std::net::Shutdown::Both);
                }
                return Ok((sent, got));
            }
            None => {}
        }
        // Whatever criu has written, without waiting.
        loop {
            let mut fds = [nix::poll::PollFd::new(local.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).map_err(io::Error::from)?;
            if ready == 0 {
                break;
            }
            let n = match reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                let _ = link.send(Frame::Text(END.into()));
                return Ok((sent, got));
            }
            sent += n as u64;
            link.send(Frame::Binary(buf[..n].to_vec()))?;
        }
    }
    Ok((sent, got))
}
