//! The proxy forwarding real connections between network namespaces (root: they are made with
//! unshare). Each test makes its own namespaces, so fixed ports inside them never collide; the
//! one test that listens on the host's loopback takes a free port there.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::Duration;

use corral_proxy::{NsSpec, Proxy, ProxyConfig, ProxyError, ProxyHeader};
use support::{exchange, pattern, root_or_skip, spawn_tcp_echo, unique, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config(listen: &str, listen_ns: NsSpec, connect: &str, connect_ns: NsSpec) -> ProxyConfig {
    let mut c = ProxyConfig::new(listen, connect);
    c.listen_ns = listen_ns;
    c.connect_ns = connect_ns;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_on_the_host_reaches_a_service_on_a_namespace_loopback() {
    if !root_or_skip("tcp_on_the_host_reaches_a_service_on_a_namespace_loopback") {
        return;
    }
    let inside = Sandbox::new();
    let service = inside.tcp_listener("127.0.0.1:7000");
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = service.accept().await {
            tokio::spawn(async move {
                let mut line = [0u8; 5];
                s.read_exact(&mut line).await.unwrap();
                let reply = format!("inside, {} from {}", String::from_utf8_lossy(&line), peer.ip());
                s.write_all(reply.as_bytes()).await.unwrap();
            });
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(&config(
        &format!("tcp:127.0.0.1:{port}"),
        NsSpec::host(),
        "tcp:127.0.0.1:7000",
        inside.spec(),
    ))
    .await
    .expect("starting the proxy");

    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client.write_all(b"ping!").await.unwrap();
    let mut reply = String::new();
    timeout(LIMIT, client.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    // The namespace's own loopback answered, and saw the proxy connect from inside it.
    assert_eq!(reply, "inside, ping! from 127.0.0.1");
    proxy.stop().await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_transfers_both_ways_with_half_close() {
    if !root_or_skip("concurrent_large_transfers_both_ways_with_half_close") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    spawn_tcp_echo(inside.tcp_listener("127.0.0.1:7001"));

    // A service that sends first and half-closes, then counts what the client still sends.
    let first = inside.tcp_listener("127.0.0.1:7002");
    let (counted_tx, mut counted) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let (s, _) = first.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        w.write_all(&pattern(2 << 20, 99)).await.unwrap();
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        counted_tx.send(got).await.unwrap();
    });

    let proxy = Proxy::start(&config(
        "tcp:127.0.0.1:7000,7003",
        outside.spec(),
        "tcp:127.0.0.1:7001,7002",
        inside.spec(),
    ))
    .await
    .unwrap();

    const CLIENTS: u32 = 8;
    const SIZE: usize = 4 << 20;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let stream = outside.tcp_connect(addr("127.0.0.1:7000"));
        clients.push(tokio::spawn(async move {
            let data = pattern(SIZE + i as usize * 1000, i);
            let back = exchange(stream, &data).await;
            assert!(back == data, "client {i}: {} bytes back of {}", back.len(), data.len());
        }));
    }
    let all = async {
        for c in clients {
            c.await.unwrap();
        }
    };
    timeout(LIMIT, all).await.expect("transfers took too long");

    // The server's direction ends first; the client's still goes through afterwards.
    let stream = outside.tcp_connect(addr("127.0.0.1:7003"));
    let (mut r, mut w) = stream.into_split();
    let mut got = Vec::new();
    timeout(LIMIT, r.read_to_end(&mut got)).await.unwrap().unwrap();
    assert!(got == pattern(2 << 20, 99), "{} bytes from the server", got.len());
    let late = pattern(1 << 20, 7);
    w.write_all(&late).await.unwrap();
    w.shutdown().await.unwrap();
    let received = timeout(LIMIT, counted.recv()).await.unwrap().unwrap();
    assert!(received == late, "{} bytes reached the server", received.len());
    proxy.stop().await;
}

/// Sends `msg` to the proxy and returns which session (source address) the echo service saw.
async fn ask(sock: &tokio::net::UdpSocket, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), "127.0.0.1:5300").await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = timeout(LIMIT, sock.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(from, addr("127.0.0.1:5300"));
    let reply = String::from_utf8(buf[..n].to_vec()).unwrap();
    let (session, echoed) = reply.split_once('|').unwrap();
    assert_eq!(echoed, msg);
    session.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trip_with_a_session_per_client() {
    if !root_or_skip("udp_round_trip_with_a_session_per_client") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    let service = inside.udp_socket("127.0.0.1:5301");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = service.recv_from(&mut buf).await {
            let reply = format!("{peer}|{}", String::from_utf8_lossy(&buf[..n]));
            service.send_to(reply.as_bytes(), peer).await.unwrap();
        }
    });
    let mut c = config(
        "udp:127.0.0.1:5300",
        outside.spec(),
        "udp:127.0.0.1:5301",
        inside.spec(),
    );
    c.udp_timeout_secs = 1;
    let proxy = Proxy::start(&c).await.unwrap();

    let (a, b) = (outside.udp_socket("127.0.0.1:0"), outside.udp_socket("127.0.0.1:0"));
    let a1 = ask(&a, "a1").await;
    let b1 = ask(&b, "b1").await;
    let a2 = ask(&a, "a2").await;
    assert_ne!(a1, b1, "two clients share a session");
    assert_eq!(a1, a2, "one client got two sessions");
    assert!(a1.starts_with("127.0.0.1:"), "the service saw {a1}");
    // After a quiet second the session is gone; the next datagram opens a new one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a3 = ask(&a, "a3").await;
    assert_ne!(a1, a3, "the idle session was kept");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_listener_forwards_to_tcp_with_its_owner_and_mode() {
    if !root_or_skip("unix_listener_forwards_to_tcp_with_its_owner_and_mode") {
        return;
    }
    let inside = Sandbox::new();
    spawn_tcp_echo(inside.tcp_listener("127.0.0.1:7001"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    // A socket left by an earlier proxy is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());

    let mut c = config(
        &format!("unix:{}", path.display()),
        NsSpec::host(),
        "tcp:127.0.0.1:7001",
        inside.spec(),
    );
    (c.uid, c.gid, c.mode) = (Some(1234), Some(5678), Some(0o660));
    let proxy = Proxy::start(&c).await.unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));

    let data = pattern(3 << 20, 3);
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let back = timeout(LIMIT, exchange(stream, &data)).await.unwrap();
    assert!(back == data);
    proxy.stop().await;
    assert!(!path.exists(), "the socket was left behind");

    // Something that is not a socket is never removed.
    std::fs::write(&path, "keep").unwrap();
    let err = Proxy::start(&c).await.err().expect("started over a regular file");
    assert!(
        matches!(err, ProxyError::Listen { .. }) && err.to_string().contains("other than a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_paths_resolve_in_the_side_mount_namespace() {
    if !root_or_skip("unix_paths_resolve_in_the_side_mount_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.path().join("ctr");
    std::fs::create_dir(&private).unwrap();
    // A "container": its own network and mount namespaces, with a tmpfs on `private`.
    let container = Sandbox::with_private_dir(&private);
    let (outside, other) = (Sandbox::new(), Sandbox::new());

    // tcp on the outside -> a unix socket that exists only in the container's mount namespace.
    let service_path = private.join("svc.sock");
    support::spawn_unix_echo(container.unix_listener(&service_path));
    assert!(!service_path.exists(), "the container's file is visible on the host");
    let to_unix = Proxy::start(&config(
        "tcp:127.0.0.1:7000",
        outside.spec(),
        &format!("unix:{}", service_path.display()),
        container.spec(),
    ))
    .await
    .unwrap();
    let data = pattern(1 << 20, 5);
    let back = timeout(LIMIT, exchange(outside.tcp_connect(addr("127.0.0.1:7000")), &data))
        .await
        .unwrap();
    assert!(back == data);

    // A unix listener made inside the container (bind=instance) -> tcp elsewhere.
    spawn_tcp_echo(other.tcp_listener("127.0.0.1:7001"));
    let listen_path = private.join("listen.sock");
    let mut c = config(
        &format!("unix:{}", listen_path.display()),
        container.spec(),
        "tcp:127.0.0.1:7001",
        other.spec(),
    );
    (c.uid, c.gid, c.mode) = (Some(100_000), Some(100_000), Some(0o600));
    let from_unix = Proxy::start(&c).await.unwrap();
    assert!(!listen_path.exists(), "the listener was made on the host");
    let meta = container.run(|| std::fs::symlink_metadata(&listen_path)).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (100_000, 100_000, 0o600)
    );
    let stream = container.unix_connect(&listen_path);
    let back = timeout(LIMIT, exchange(stream, b"from the container")).await.unwrap();
    assert_eq!(back, b"from the container");
    from_unix.stop().await;
    assert!(
        !container.run(|| listen_path.exists()),
        "the socket was left in the container"
    );
    to_unix.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abstract_unix_listener_lives_in_the_listen_network_namespace() {
    if !root_or_skip("abstract_unix_listener_lives_in_the_listen_network_namespace") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    spawn_tcp_echo(inside.tcp_listener("127.0.0.1:7001"));
    let name = unique("corral-proxy-test");
    let proxy = Proxy::start(&config(
        &format!("unix:@{name}"),
        outside.spec(),
        "tcp:127.0.0.1:7001",
        inside.spec(),
    ))
    .await
    .unwrap();
    let back = timeout(LIMIT, exchange(outside.unix_connect_abstract(&name), b"abstract"))
        .await
        .unwrap();
    assert_eq!(back, b"abstract");
    // Abstract names belong to a network namespace: the other one has no such socket.
    let elsewhere = inside.run(|| {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        std::os::unix::net::UnixStream::connect_addr(&a)
    });
    assert!(elsewhere.is_err());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_ranges_pair_up_or_share_one_port() {
    if !root_or_skip("port_ranges_pair_up_or_share_one_port") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    for port in [8000u16, 8001, 8002, 8100] {
        let l = inside.tcp_listener(&format!("127.0.0.1:{port}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(port.to_string().as_bytes()).await;
            }
        });
    }
    let ranges = Proxy::start(&config(
        "tcp:127.0.0.1:7000-7002",
        outside.spec(),
        "tcp:127.0.0.1:8000-8002",
        inside.spec(),
    ))
    .await
    .unwrap();
    assert_eq!(ranges.routes().len(), 3);
    let shared = Proxy::start(&config(
        "tcp:127.0.0.1:7100,7101",
        outside.spec(),
        "tcp:127.0.0.1:8100",
        inside.spec(),
    ))
    .await
    .unwrap();
    for (listen, want) in [
        (7000, "8000"),
        (7001, "8001"),
        (7002, "8002"),
        (7100, "8100"),
        (7101, "8100"),
    ] {
        let mut s = outside.tcp_connect(addr(&format!("127.0.0.1:{listen}")));
        let mut got = String::new();
        timeout(LIMIT, s.read_to_string(&mut got)).await.unwrap().unwrap();
        assert_eq!(got, want, "listen port {listen}");
    }
    ranges.stop().await;
    shared.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_header_names_the_original_client() {
    if !root_or_skip("proxy_protocol_v2_header_names_the_original_client") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    let service = inside.tcp_listener("127.0.0.1:7001");
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = service.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                let (header, len) = ProxyHeader::decode(&all).unwrap().expect("a whole header");
                seen_tx.send((header, all[len..].to_vec())).await.unwrap();
            });
        }
    });
    let mut c = config(
        "tcp:127.0.0.1:7000",
        outside.spec(),
        "tcp:127.0.0.1:7001",
        inside.spec(),
    );
    c.proxy_protocol = true;
    let proxy = Proxy::start(&c).await.unwrap();

    let mut client = outside.tcp_connect(addr("127.0.0.1:7000"));
    let me = client.local_addr().unwrap();
    client.write_all(b"payload").await.unwrap();
    client.shutdown().await.unwrap();
    let (header, rest) = timeout(LIMIT, seen.recv()).await.unwrap().unwrap();
    assert_eq!(
        header,
        ProxyHeader::Tcp {
            source: me,
            destination: addr("127.0.0.1:7000")
        }
    );
    assert_eq!(rest, b"payload");
    proxy.stop().await;

    // A unix client has no address to tell: a LOCAL header.
    let name = unique("corral-proxy-test-pp");
    let mut c = config(
        &format!("unix:@{name}"),
        outside.spec(),
        "tcp:127.0.0.1:7001",
        inside.spec(),
    );
    c.proxy_protocol = true;
    let proxy = Proxy::start(&c).await.unwrap();
    let mut client = outside.unix_connect_abstract(&name);
    client.write_all(b"unix").await.unwrap();
    client.shutdown().await.unwrap();
    let (header, rest) = timeout(LIMIT, seen.recv()).await.unwrap().unwrap();
    assert_eq!((header, rest.as_slice()), (ProxyHeader::Local, &b"unix"[..]));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_shut_down() {
    if !root_or_skip("run_serves_until_shut_down") {
        return;
    }
    let (outside, inside) = (Sandbox::new(), Sandbox::new());
    spawn_tcp_echo(inside.tcp_listener("127.0.0.1:7001"));
    let c = config(
        "tcp:127.0.0.1:7000",
        outside.spec(),
        "tcp:127.0.0.1:7001",
        inside.spec(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let served = tokio::spawn(corral_proxy::run(
        c,
        move |p| ready_tx.send(p.routes().to_vec()).unwrap(),
        async move {
            let _ = stopped.await;
        },
    ));
    let routes = timeout(LIMIT, ready).await.unwrap().unwrap();
    assert_eq!(routes, ["tcp:127.0.0.1:7000 -> tcp:127.0.0.1:7001"]);
    let back = timeout(LIMIT, exchange(outside.tcp_connect(addr("127.0.0.1:7000")), b"x"))
        .await
        .unwrap();
    assert_eq!(back, b"x");
    stop.send(()).unwrap();
    timeout(LIMIT, served).await.unwrap().unwrap().unwrap();
    assert!(outside.run(|| std::net::TcpStream::connect("127.0.0.1:7000")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_what_failed() {
    if !root_or_skip("start_errors_name_what_failed") {
        return;
    }
    let outside = Sandbox::new();
    let _taken = outside.tcp_listener("127.0.0.1:7000");
    let err = Proxy::start(&config(
        "tcp:127.0.0.1:6999-7000",
        outside.spec(),
        "tcp:127.0.0.1:80",
        NsSpec::host(),
    ))
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string().starts_with("listening on tcp:127.0.0.1:7000: "),
        "{err}"
    );
    // 6999 was bound before 7000 failed, and is free again.
    assert!(outside.run(|| std::net::TcpListener::bind("127.0.0.1:6999")).is_ok());

    let mut c = ProxyConfig::new("tcp:127.0.0.1:7000", "tcp:127.0.0.1:80");
    c.connect_ns.net = Some("/nonexistent/ns/net".into());
    let err = Proxy::start(&c).await.err().unwrap();
    assert!(
        err.to_string().starts_with("opening namespace /nonexistent/ns/net: "),
        "{err}"
    );

    let err = Proxy::start(&ProxyConfig::new("tcp:localhost:80", "tcp:127.0.0.1:80"))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .starts_with("listen: invalid proxy address \"tcp:localhost:80\": \"localhost\" is not an IP address"),
        "{err}"
    );
}
