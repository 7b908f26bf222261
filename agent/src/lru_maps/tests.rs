use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use super::*;
use crate::ebpf::Uses;
use crate::net::capture::{CaptureOptions, SocketCapture};

#[test]
fn the_evictions_are_inserts_neither_deleted_nor_left() {
    assert_eq!(evictions_at_least(200, 10, 64), 126);
    assert_eq!(evictions_at_least(100, 0, 100), 0);
    // Deletes and keys that came after the inserts were read: never below zero.
    assert_eq!(evictions_at_least(100, 60, 50), 0);
    assert_eq!(evictions_at_least(0, 5, 0), 0);
}

/// Loads the embedded object, as root.
fn load(uses: Uses) -> Ebpf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads eBPF programs: run it as root"
    );
    crate::probe::ensure_tracefs();
    crate::ebpf::load(uses).expect("the eBPF object loads (built with `cargo xtask build`)")
}

/// Captures this process's sockets, requests tracked (so a server read puts the thread in
/// THREAD_REQUESTS).
fn capture(ebpf: &mut Ebpf, registry: &Registry) -> SocketCapture {
    let options = CaptureOptions {
        capture_bytes: 256,
        agent_pid: 0,
        pids: vec![std::process::id()],
        seed_existing: false,
        track_requests: true,
        ..Default::default()
    };
    // The events themselves are not looked at: the receiver goes, and the reader counts them
    // as dropped.
    SocketCapture::start(ebpf, options, registry)
        .expect("socket capture starts")
        .0
}

/// `threads` threads, one after the other, each read a request on a connection it accepted:
/// each is a new key in THREAD_REQUESTS, which nothing deletes (the thread's entry waits for
/// its next request).
fn serve_on_new_threads(threads: usize) {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind loopback"));
    let addr = listener.local_addr().expect("local address");
    for _ in 0..threads {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            let mut client = TcpStream::connect(addr).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: loupe\r\n\r\n")
                .expect("write the request");
            let mut buf = [0u8; 256];
            assert!(server.read(&mut buf).expect("read the request") > 0);
        })
        .join()
        .expect("the serving thread");
    }
}

fn thread_requests(readings: &[Reading]) -> Reading {
    *readings
        .iter()
        .find(|r| r.name == "THREAD_REQUESTS")
        .expect("THREAD_REQUESTS read")
}

#[test]
fn a_full_lru_map_reports_what_the_kernel_evicted() {
    // Uses::NONE creates the socket maps small: THREAD_REQUESTS holds 64 threads.
    let mut ebpf = load(Uses::NONE);
    let registry = Registry::new();
    let mut maps = LruMaps::open(&mut ebpf, &registry).expect("the LRU maps open");
    let before = thread_requests(&maps.scan());
    let mut capture = capture(&mut ebpf, &registry);
    serve_on_new_threads(200);
    let r = thread_requests(&maps.scan());
    capture.stop();
    eprintln!("{r:?}");

    assert_eq!(before.live, 0, "{before:?}");
    assert!(r.inserted >= 200, "every thread was a new key: {r:?}");
    assert_eq!(r.deleted, 0, "nothing deletes a thread's entry: {r:?}");
    assert!(r.live <= 64, "{r:?}");
    assert!(r.evicted >= 200 - 64, "{r:?}");
    assert_eq!(r.evicted, r.inserted - r.live, "{r:?}");
    let rendered = registry.render();
    for line in [
        format!(
            "loupe_kernel_map_evictions_total{{map=\"THREAD_REQUESTS\"}} {}",
            r.evicted
        ),
        format!(
            "loupe_kernel_map_entries{{map=\"THREAD_REQUESTS\"}} {}",
            r.live
        ),
        "loupe_kernel_map_capacity{map=\"THREAD_REQUESTS\"} 64".to_owned(),
    ] {
        assert!(rendered.contains(&line), "{line} missing in:\n{rendered}");
    }

    // A reading never lowers the count.
    let again = thread_requests(&maps.scan());
    assert!(again.evicted >= r.evicted, "{again:?} after {r:?}");
}

#[test]
fn a_map_with_room_evicts_nothing_and_exited_threads_leave_it() {
    let mut ebpf = load(Uses::ALL);
    let registry = Registry::new();
    let mut maps = LruMaps::open(&mut ebpf, &registry).expect("the LRU maps open");
    let mut capture = capture(&mut ebpf, &registry);
    serve_on_new_threads(100);
    let readings = maps.scan();

    let r = thread_requests(&readings);
    // Other tests of this binary converse in this process too (every program loaded here follows
    // it), so the figures are at least this test's.
    assert!(r.inserted >= 100, "{r:?}");
    assert!(r.live >= 100, "{r:?}");
    assert_eq!(r.evicted, 0, "{r:?}");
    assert_eq!(readings.len(), loupe_common::lru::MAPS.len());
    for r in &readings {
        assert_eq!(r.evicted, 0, "{r:?}");
    }
    assert!(
        registry
            .render()
            .contains("loupe_kernel_map_evictions_total{map=\"THREAD_REQUESTS\"} 0"),
        "the metric is there at zero"
    );

    // With the profiler's exit tracepoint attached, a thread's entry goes when it exits.
    let exit: &mut aya::programs::TracePoint =
        crate::ebpf::program(&mut ebpf, "profile_exit").expect("profile_exit");
    exit.load().expect("profile_exit loads");
    exit.attach("sched", "sched_process_exit")
        .expect("profile_exit attaches");
    let before = thread_requests(&maps.scan());
    serve_on_new_threads(100);
    // A joined thread may not have reached its exit tracepoint yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = thread_requests(&maps.scan());
        if r.deleted >= before.deleted + 100 || std::time::Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    capture.stop();
    eprintln!("{before:?}\n{r:?}");
    assert!(r.inserted >= before.inserted + 100, "{r:?}");
    assert!(
        r.deleted >= before.deleted + 100,
        "each exited thread's entry went: {r:?}"
    );
    assert_eq!(r.evicted, 0, "{r:?}");
}

fn reading(readings: &[Reading], name: &str) -> Reading {
    *readings
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} read"))
}

fn sockaddr(addr: std::net::SocketAddr) -> libc::sockaddr_in {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 loopback")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A forked child that waits for a byte on `go`, then serves one request on `server` and, while
/// serving it, calls `upstream` with a request of its own and waits for an answer that never
/// comes. Only async-signal-safe calls after the fork (this process has threads).
fn fork_caller(go: RawFd, server: RawFd, upstream: &libc::sockaddr_in) -> libc::pid_t {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: loupe\r\n\r\n";
    // SAFETY: the child only makes raw syscalls on memory prepared before the fork, and leaves
    // with _exit.
    unsafe {
        let pid = libc::fork();
        if pid != 0 {
            return pid;
        }
        let mut buf = [0u8; 256];
        if libc::read(go, buf.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(1);
        }
        let conn = libc::accept(server, std::ptr::null_mut(), std::ptr::null_mut());
        if conn < 0 || libc::read(conn, buf.as_mut_ptr().cast(), buf.len()) <= 0 {
            libc::_exit(2);
        }
        let call = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if call < 0 || libc::connect(call, (upstream as *const libc::sockaddr_in).cast(), len) != 0
        {
            libc::_exit(3);
        }
        if libc::write(call, REQUEST.as_ptr().cast(), REQUEST.len()) != REQUEST.len() as isize {
            libc::_exit(4);
        }
        // Killed in here: the kernel closes both connections at exit, no close() runs.
        libc::read(call, buf.as_mut_ptr().cast(), buf.len());
        libc::_exit(5)
    }
}

#[test]
fn a_process_killed_mid_request_leaves_no_context_behind() {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut ebpf = load(Uses::ALL);
    let registry = Registry::new();
    let mut maps = LruMaps::open(&mut ebpf, &registry).expect("the LRU maps open");
    let server = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let mut go = [0; 2];
    // SAFETY: `go` has room for the two descriptors pipe() writes.
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: pipe() made both descriptors; each gets one owner.
    let (go_read, mut go_write) = unsafe {
        (
            OwnedFd::from_raw_fd(go[0]),
            std::fs::File::from_raw_fd(go[1]),
        )
    };
    let child = fork_caller(
        go_read.as_raw_fd(),
        server.as_raw_fd(),
        &sockaddr(upstream.local_addr().expect("address")),
    );
    assert!(child > 0, "fork");

    // Only the child is followed: every entry of this object's maps is its.
    let options = CaptureOptions {
        capture_bytes: 256,
        agent_pid: 0,
        pids: vec![child as u32],
        seed_existing: false,
        tcp_context: true,
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (mut capture, _events) =
        SocketCapture::start(&mut ebpf, options, &registry).expect("socket capture starts");
    assert_eq!(capture.tcp_context_off(), None, "in-band context attaches");
    let before = maps.scan();

    go_write.write_all(b"g").expect("start the child");
    let mut client = TcpStream::connect(server.local_addr().expect("address")).expect("connect");
    client
        .write_all(b"GET /order HTTP/1.1\r\nHost: loupe\r\n\r\n")
        .expect("write the request");
    let (mut call, _) = upstream.accept().expect("the child calls");
    let mut buf = [0u8; 256];
    assert!(call.read(&mut buf).expect("read the call") > 0);

    // The child's connection (by tuple and id), and the request its thread and process serve:
    // a process's exit deletes none of them (the profiler's exit tracepoint, which deletes the
    // last two, is not attached here).
    const LEFT: [&str; 4] = [
        "TCP_CTX_OUT",
        "CLIENT_PARENTS",
        "THREAD_REQUESTS",
        "PROCESS_REQUESTS",
    ];
    let calling = maps.scan();
    for name in LEFT {
        let (b, c) = (reading(&before, name), reading(&calling, name));
        eprintln!("{b:?}\n{c:?}");
        assert_eq!(c.inserted, b.inserted + 1, "the call's entry: {c:?}");
        assert_eq!(c.live, 1, "{c:?}");
    }

    // SAFETY: `child` is our child, not yet reaped.
    unsafe {
        assert_eq!(libc::kill(child, libc::SIGKILL), 0, "kill the child");
        let mut status = 0;
        assert_eq!(libc::waitpid(child, &mut status, 0), child, "reap it");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let gone = loop {
        let r = maps.scan();
        let swept = LEFT.iter().all(|name| reading(&r, name).live == 0);
        if swept || std::time::Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    capture.stop();
    for name in LEFT {
        let (c, g) = (reading(&calling, name), reading(&gone, name));
        eprintln!("{g:?}");
        assert_eq!(
            g.live, 0,
            "the sweep deleted the killed client's entry: {g:?}"
        );
        assert_eq!(g.deleted, c.deleted + 1, "its delete is counted: {g:?}");
        assert_eq!(g.evicted, 0, "nothing read as evicted: {g:?}");
    }
}
