//! Connections that were open before the capture started: found in /proc and put into the
//! kernel's connection map, so their next reads and writes are captured like any other.
//!
//! A DaemonSet agent starts (or restarts) long after the services it watches, and their most
//! important connections are the long-lived ones: database and cache pools, keep-alive HTTP
//! clients. For every process, each fd that is a socket (`/proc/PID/fd/N` → `socket:[INODE]`) is
//! matched against the ESTABLISHED TCP sockets of the process's network namespace
//! (`/proc/PID/net/tcp` and `tcp6`, read once per namespace). The connection's role comes from the
//! namespace's listening sockets: a local port that is also listened on makes it the server side.
//!
//! Nothing is sent to the span builder: the first DATA event of a seeded connection carries its
//! role and addresses, and the builder starts its state from that. The protocol is recognized
//! from the next request. What the seeding cannot know: requests already under way, and (MySQL)
//! statements prepared before the agent started.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::Path,
};

use loupe_common::socket::{ConnState, ConnTuple, role};

/// Connection ids of seeded connections: the kernel's are `(cpu + 1) << 48 | n` with at most a few
/// hundred CPUs, so this top range is never one of them.
pub const SEEDED_ID_BASE: u64 = 0xffff << 48;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `st` of /proc/net/tcp: TCP_ESTABLISHED and TCP_LISTEN.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// One line of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub tuple: ConnTuple,
    pub state: u8,
    pub inode: u64,
}

/// Parses one data line of /proc/net/tcp (`v6` false) or /proc/net/tcp6; None for the header
/// line or anything malformed.
pub fn parse_tcp_line(line: &str, v6: bool) -> Option<TcpEntry> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?.strip_suffix(':')?;
    let (local_addr, local_port) = parse_endpoint(fields.next()?, v6)?;
    let (remote_addr, remote_port) = parse_endpoint(fields.next()?, v6)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode = fields.nth(5)?.parse().ok()?;
    Some(TcpEntry {
        tuple: ConnTuple {
            local_addr,
            remote_addr,
            local_port,
            remote_port,
            family: if v6 { AF_INET6 } else { AF_INET },
            _pad: 0,
        },
        state,
        inode,
    })
}

/// `ADDR:PORT` in hex as the kernel prints it: the address as 32-bit words in host byte order
/// (one for IPv4, four for IPv6), the port as a number. IPv4 comes out v4-mapped, as the socket
/// programs write it.
fn parse_endpoint(s: &str, v6: bool) -> Option<([u8; 16], u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = if v6 { 4 } else { 1 };
    if addr.len() != words * 8 {
        return None;
    }
    let word = |w: usize| -> Option<[u8; 4]> {
        let hex = addr.get(w * 8..w * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let bytes = if v6 {
        let mut bytes = [0u8; 16];
        for w in 0..words {
            bytes[w * 4..w * 4 + 4].copy_from_slice(&word(w)?);
        }
        bytes
    } else {
        Ipv4Addr::from(word(0)?).to_ipv6_mapped().octets()
    };
    Some((bytes, port))
}

/// A network namespace's TCP sockets: the established ones by inode, and the listening ports.
#[derive(Debug, Default)]
pub struct NamespaceSockets {
    pub established: HashMap<u64, ConnTuple>,
    pub listening: HashSet<u16>,
}

impl NamespaceSockets {
    /// From the text of `tcp` and `tcp6` files.
    pub fn parse(tcp: &str, tcp6: &str) -> Self {
        let mut out = NamespaceSockets::default();
        for (text, v6) in [(tcp, false), (tcp6, true)] {
            for entry in text.lines().filter_map(|l| parse_tcp_line(l, v6)) {
                match entry.state {
                    ESTABLISHED if entry.inode != 0 => {
                        out.established.insert(entry.inode, entry.tuple);
                    }
                    LISTEN => {
                        out.listening.insert(entry.tuple.local_port);
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The state for a socket found established here: server side when its local port is also
    /// listened on in this namespace.
    pub fn conn_state(&self, inode: u64, conn_id: u64) -> Option<ConnState> {
        let tuple = *self.established.get(&inode)?;
        let role = if self.listening.contains(&tuple.local_port) {
            role::SERVER
        } else {
            role::CLIENT
        };
        Some(ConnState {
            conn_id,
            role,
            last_direction: 0,
            tuple,
            ctx: Default::default(),
        })
    }
}

/// A connection found: the connection map's key (`pid << 32 | fd`) and value.
pub type Seeded = (u64, ConnState);

/// What `find_connections` found.
#[derive(Debug, Default)]
pub struct Found {
    /// At most the limit asked for.
    pub connections: Vec<Seeded>,
    /// Established connections found beyond the limit (not followed).
    pub over_limit: usize,
}

/// Finds the established TCP connections of every process under `proc_root` (`/proc`) that `want`
/// accepts, at most `limit` (the rest are only counted). Processes and fds that vanish meanwhile
/// are skipped.
pub fn find_connections(proc_root: &Path, want: impl Fn(u32) -> bool, limit: usize) -> Found {
    let mut namespaces: HashMap<u64, NamespaceSockets> = HashMap::new();
    let mut found = Found::default();
    for pid in crate::procfs::pids(proc_root) {
        if !want(pid) {
            continue;
        }
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut sockets: Vec<(u32, u64)> = fds
            .flatten()
            .filter_map(|fd| {
                let n = fd.file_name().to_str()?.parse::<u32>().ok()?;
                let target = fs::read_link(fd.path()).ok()?;
                let inode = target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()?;
                Some((n, inode))
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        sockets.sort_unstable();
        // The namespace's identity is the inode of /proc/PID/ns/net.
        let Ok(netns) = fs::metadata(dir.join("ns/net")).map(|m| m.ino()) else {
            continue;
        };
        let ns = namespaces.entry(netns).or_insert_with(|| {
            let read = |f: &str| fs::read_to_string(dir.join("net").join(f)).unwrap_or_default();
            NamespaceSockets::parse(&read("tcp"), &read("tcp6"))
        });
        for (fd, inode) in sockets {
            let out = &mut found.connections;
            let id = SEEDED_ID_BASE | out.len() as u64;
            if let Some(state) = ns.conn_state(inode, id) {
                if out.len() < limit {
                    out.push(((u64::from(pid) << 32) | u64::from(fd), state));
                } else {
                    found.over_limit += 1;
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00000D2D 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:18EB 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_proc_net_tcp_lines() {
        let mut lines = TCP.lines();
        assert_eq!(parse_tcp_line(lines.next().unwrap(), false), None, "header");
        let listen = parse_tcp_line(lines.next().unwrap(), false).unwrap();
        assert_eq!((listen.state, listen.inode), (LISTEN, 1001));
        assert_eq!(listen.tuple.local_port, 8080);
        let server = parse_tcp_line(lines.next().unwrap(), false).unwrap();
        assert_eq!(
            server.tuple,
            ConnTuple {
                local_addr: Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
                remote_addr: Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
                local_port: 8080,
                remote_port: 50000,
                family: AF_INET,
                _pad: 0,
            }
        );
        let v6 = parse_tcp_line(TCP6.lines().nth(1).unwrap(), true).unwrap();
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(v6.tuple.local_addr, loopback);
        assert_eq!((v6.tuple.local_port, v6.tuple.remote_port), (6379, 54321));
        assert_eq!(v6.tuple.family, AF_INET6);
        // Garbage and short lines are refused, never a panic.
        for bad in [
            "",
            "0:",
            "   5: zz:1 00:0 01",
            "   5: 0100007F:1F90 0100007F",
        ] {
            assert_eq!(parse_tcp_line(bad, false), None, "{bad:?}");
        }
    }

    #[test]
    fn roles_come_from_the_namespaces_listening_ports() {
        let ns = NamespaceSockets::parse(TCP, TCP6);
        assert_eq!(ns.listening, HashSet::from([8080]));
        // Only ESTABLISHED sockets with an inode are kept (TIME_WAIT has inode 0).
        assert_eq!(ns.established.len(), 3);
        assert_eq!(ns.conn_state(1002, 7).unwrap().role, role::SERVER);
        assert_eq!(ns.conn_state(1003, 7).unwrap().role, role::CLIENT);
        assert_eq!(ns.conn_state(1003, 7).unwrap().conn_id, 7);
        assert_eq!(ns.conn_state(2001, 7).unwrap().role, role::CLIENT);
        assert!(
            ns.conn_state(1001, 7).is_none(),
            "a listening socket is no connection"
        );
    }

    /// On this machine: a connection this process holds is found with its role and addresses.
    #[test]
    fn finds_this_process_connections_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let found = find_connections(Path::new("/proc"), |pid| pid == me, 1024);
        assert_eq!(found.over_limit, 0);
        // A limit of 1 keeps one of them and counts the other.
        let one = find_connections(Path::new("/proc"), |pid| pid == me, 1);
        assert_eq!((one.connections.len(), one.over_limit), (1, 1));
        let found = found.connections;
        use std::os::fd::AsRawFd;
        let key = |fd: i32| (u64::from(me) << 32) | fd as u64;
        let by_key: HashMap<u64, ConnState> = found.into_iter().collect();
        let c = by_key.get(&key(client.as_raw_fd())).expect("client fd");
        let s = by_key.get(&key(server.as_raw_fd())).expect("server fd");
        assert_eq!((c.role, s.role), (role::CLIENT, role::SERVER));
        let port = listener.local_addr().unwrap().port();
        assert_eq!(c.tuple.remote_port, port);
        assert_eq!(s.tuple.local_port, port);
        assert_eq!(c.tuple.local_port, s.tuple.remote_port);
        assert!(c.conn_id >= SEEDED_ID_BASE && s.conn_id >= SEEDED_ID_BASE);
        assert_ne!(c.conn_id, s.conn_id);
        assert!(!by_key.contains_key(&key(listener.as_raw_fd())));
    }
}
