use super::*;

/// Builds BTF blobs by hand: types are appended in order (first is id 1), names interned.
#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

impl Builder {
    fn new() -> Self {
        Builder {
            strings: vec![0],
            ..Default::default()
        }
    }

    fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn record(
        &mut self,
        name: &str,
        kind: u8,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
    ) -> u32 {
        let name_off = self.name(name);
        let info = (u32::from(kind) << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
        for v in [name_off, info, size_or_type] {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.record(name, btf_kind::INT, false, 0, bytes);
        self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
        id
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.record("", btf_kind::PTR, false, 0, to)
    }

    fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.record(name, btf_kind::TYPEDEF, false, 0, to)
    }

    fn array(&mut self, elem: u32, index: u32, nelems: u32) -> u32 {
        let id = self.record("", btf_kind::ARRAY, false, 0, 0);
        for v in [elem, index, nelems] {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        id
    }

    /// Members: (name, type, bit offset, bitfield size).
    fn composite(
        &mut self,
        kind: u8,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kind_flag = members.iter().any(|m| m.3 != 0);
        let names: Vec<u32> = members.iter().map(|m| self.name(m.0)).collect();
        let id = self.record(name, kind, kind_flag, members.len() as u32, size);
        for (m, name_off) in members.iter().zip(names) {
            let offset = if kind_flag { (m.3 << 24) | m.2 } else { m.2 };
            for v in [name_off, m.1, offset] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }
        id
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
        self.composite(btf_kind::STRUCT, name, size, members)
    }

    fn union(&mut self, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
        self.composite(btf_kind::UNION, "", size, members)
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            HEADER_LEN as u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature kernel: the structs and members the socket programs walk, with anonymous unions
/// and structs nested the way `struct sock_common` nests them, and a bitfield beside them.
fn mini_kernel() -> Vec<u8> {
    mini_kernel_with(Some(8))
}

/// [`mini_kernel`] whose `tcp_sock.bytes_received` is that many bytes wide, or missing (kernels
/// before 4.1).
fn mini_kernel_with(bytes_received: Option<u32>) -> Vec<u8> {
    let mut b = Builder::new();
    let u8_ = b.int("unsigned char", 1);
    let u16_ = b.int("unsigned short", 2);
    let u32_ = b.int("unsigned int", 4);
    let u64_ = b.int("long long unsigned int", 8);
    let be16 = b.typedef("__be16", u16_);
    let be32 = b.typedef("__be32", u32_);
    let void_ptr = b.ptr(0);
    let in6 = {
        let bytes = b.array(u8_, u32_, 16);
        b.strukt("in6_addr", 16, &[("s6_addr", bytes, 0, 0)])
    };
    let addrpair = b.strukt(
        "",
        8,
        &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
    );
    let addr_union = b.union(8, &[("skc_addrpair", u32_, 0, 0), ("", addrpair, 0, 0)]);
    let ports = b.strukt(
        "",
        4,
        &[("skc_dport", be16, 0, 0), ("skc_num", u16_, 16, 0)],
    );
    let port_union = b.union(4, &[("skc_portpair", u32_, 0, 0), ("", ports, 0, 0)]);
    let sock_common = b.strukt(
        "sock_common",
        136,
        &[
            ("", addr_union, 0, 0),
            ("skc_hash", u32_, 64, 0),
            ("", port_union, 96, 0),
            ("skc_family", u16_, 128, 0),
            ("skc_state", u8_, 144, 0),
            ("skc_reuse", u8_, 152, 4),
            ("skc_v6_daddr", in6, 448, 0),
            ("skc_v6_rcv_saddr", in6, 576, 0),
        ],
    );
    let sock = b.strukt(
        "sock",
        800,
        &[
            ("__sk_common", sock_common, 0, 0),
            ("sk_protocol", u16_, 4256, 0),
        ],
    );
    // tcp_sock begins with its sock (through inet_connection_sock and inet_sock in a real
    // kernel); since 6.8 its hot members sit between zero-length cache-line group markers.
    let marker = b.array(u8_, u32_, 0);
    let volatile_u32 = b.record("", btf_kind::VOLATILE, false, 0, u32_);
    let mut tcp_members = vec![
        ("inet_conn", sock, 0, 0),
        (
            "__cacheline_group_begin__tcp_sock_read_tx",
            marker,
            12288,
            0,
        ),
        ("write_seq", u32_, 12288, 0),
        ("rcv_nxt", volatile_u32, 12800, 0),
    ];
    let received = bytes_received.map(|n| if n == 8 { u64_ } else { u32_ });
    if let Some(t) = received {
        tcp_members.push(("bytes_received", t, 13056, 0));
    }
    b.strukt("tcp_sock", 2304, &tcp_members);
    let sock_ptr = b.ptr(sock);
    let socket = b.strukt(
        "socket",
        128,
        &[("state", u32_, 0, 0), ("sk", sock_ptr, 192, 0)],
    );
    let _ = socket;
    let file = b.strukt("file", 184, &[("private_data", void_ptr, 192, 0)]);
    let file_ptr = b.ptr(file);
    let file_ptr_ptr = b.ptr(file_ptr);
    let fdtable = b.strukt(
        "fdtable",
        56,
        &[("max_fds", u32_, 0, 0), ("fd", file_ptr_ptr, 64, 0)],
    );
    let fdtable_ptr = b.ptr(fdtable);
    let files = b.strukt("files_struct", 704, &[("fdt", fdtable_ptr, 256, 0)]);
    let files_ptr = b.ptr(files);
    b.strukt("task_struct", 3264, &[("files", files_ptr, 14592, 0)]);
    b.build()
}

#[test]
fn offsets_of_a_miniature_kernel_with_nested_anonymous_members() {
    let offsets = Btf::parse(&mini_kernel())
        .unwrap()
        .socket_offsets()
        .unwrap();
    assert_eq!(
        offsets,
        KernelOffsets {
            valid: 1,
            task_files: 1824,
            files_fdt: 32,
            fdtable_fd: 8,
            fdtable_max_fds: 0,
            file_private_data: 24,
            socket_sk: 24,
            sock_protocol: 532,
            skc_family: 16,
            skc_daddr: 0,
            skc_rcv_saddr: 4,
            skc_dport: 12,
            skc_num: 14,
            skc_v6_daddr: 56,
            skc_v6_rcv_saddr: 72,
            skc_state: 18,
            tcp_write_seq: 1536,
            tcp_rcv_nxt: 1600,
            tcp_bytes_received: 1632,
            isn_valid: 1,
        }
    );
}

/// The ISN fields are optional: a kernel without `tcp_sock.bytes_received` (before 4.1) or with
/// it in another shape keeps every address offset and only turns ISNs off.
#[test]
fn isn_offsets_missing_or_misshapen_turn_isns_off_not_the_rest() {
    let full = Btf::parse(&mini_kernel())
        .unwrap()
        .socket_offsets()
        .unwrap();
    for (what, blob) in [
        ("missing", mini_kernel_with(None)),
        ("4 bytes wide", mini_kernel_with(Some(4))),
    ] {
        let o = Btf::parse(&blob).unwrap().socket_offsets().unwrap();
        assert_eq!(o.valid, 1, "{what}");
        assert_eq!(o.isn_valid, 0, "{what}");
        assert_eq!(
            (
                o.skc_state,
                o.tcp_write_seq,
                o.tcp_rcv_nxt,
                o.tcp_bytes_received
            ),
            (0, 0, 0, 0),
            "{what}"
        );
        assert_eq!(
            KernelOffsets {
                skc_state: full.skc_state,
                tcp_write_seq: full.tcp_write_seq,
                tcp_rcv_nxt: full.tcp_rcv_nxt,
                tcp_bytes_received: full.tcp_bytes_received,
                isn_valid: 1,
                ..o
            },
            full,
            "{what}"
        );
    }
}

#[test]
fn bitfields_and_wrong_shapes_are_refused() {
    let btf = Btf::parse(&mini_kernel()).unwrap();
    let err = btf
        .field("sock", &["__sk_common", "skc_reuse"])
        .unwrap_err();
    assert!(err.to_string().contains("4-bit bitfield"), "{err}");
    assert!(matches!(
        btf.field("sock", &["nope"]),
        Err(BtfError::NoMember { .. })
    ));
    assert!(matches!(
        btf.field("nope", &["x"]),
        Err(BtfError::NoStruct(_))
    ));
    let arr = btf.field("sock", &["__sk_common", "skc_v6_daddr"]).unwrap();
    assert_eq!((arr.offset, arr.size, arr.is_pointer), (56, 16, false));
}

#[test]
fn big_endian_blobs_parse() {
    // Byte-swap every 4-byte word of header, types and magic: the builder writes only u32s after
    // the 4-byte magic/version/flags prefix.
    let le = mini_kernel();
    let mut be = le.clone();
    be[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    let hdr_len = HEADER_LEN;
    let type_len = u32::from_le_bytes(le[12..16].try_into().unwrap()) as usize;
    for chunk in be[4..hdr_len + type_len].chunks_mut(4) {
        chunk.reverse();
    }
    let offsets = Btf::parse(&be).unwrap().socket_offsets().unwrap();
    assert_eq!(offsets, Btf::parse(&le).unwrap().socket_offsets().unwrap());
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    let good = mini_kernel();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![0x9f]),
        ("bad magic", vec![0; 64]),
        ("header only half there", good[..12].to_vec()),
        ("sections cut off", good[..good.len() - 10].to_vec()),
        ("types cut mid-record", {
            let mut d = good.clone();
            let type_len = u32::from_le_bytes(d[12..16].try_into().unwrap()) - 6;
            d[12..16].copy_from_slice(&type_len.to_le_bytes());
            d
        }),
        ("huge header length", {
            let mut d = good.clone();
            d[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            d
        }),
        ("huge section offset", {
            let mut d = good.clone();
            d[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
            d
        }),
    ];
    for (what, data) in cases {
        match Btf::parse(&data).and_then(|b| b.socket_offsets()) {
            Ok(o) => panic!("{what}: parsed into {o:?}"),
            Err(e) => assert!(!e.to_string().is_empty(), "{what}"),
        }
    }

    // Every prefix and every single-byte corruption: never a panic.
    for len in 0..good.len() {
        let _ = Btf::parse(&good[..len]).and_then(|b| b.socket_offsets());
    }
    for at in 0..good.len() {
        for value in [0u8, 0xff, 0x80, 0x13] {
            let mut d = good.clone();
            d[at] = value;
            let _ = Btf::parse(&d).and_then(|b| b.socket_offsets());
        }
    }
}

#[test]
fn typedef_loops_and_unknown_kinds_are_errors() {
    let mut b = Builder::new();
    // Type 1 is a typedef of type 2, which is a typedef of type 1.
    b.typedef("a", 2);
    b.typedef("b", 1);
    let looped = b.strukt("sock", 8, &[("sk_protocol", 1, 0, 0)]);
    let _ = looped;
    let btf = Btf::parse(&b.build()).unwrap();
    let err = btf.field("sock", &["sk_protocol"]).unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");

    let mut b = Builder::new();
    b.record("x", 31, false, 0, 0);
    let err = Btf::parse(&b.build()).unwrap_err();
    assert!(err.to_string().contains("unknown kind 31"), "{err}");
}

/// bits_offset of `strukt.member` in `bpftool btf dump ... format raw` output.
fn bpftool_offset(raw: &str, strukt: &str, member: &str) -> Option<u32> {
    let header = format!("STRUCT '{strukt}' size=");
    let mut lines = raw
        .lines()
        .skip_while(|l| !(l.starts_with('[') && l.contains(&header)));
    lines.next()?;
    let prefix = format!("\t'{member}' ");
    lines
        .take_while(|l| l.starts_with('\t'))
        .find(|l| l.starts_with(&prefix))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bits_offset="))?
        .parse()
        .ok()
}

#[test]
fn offsets_of_this_machines_kernel() {
    let path = Path::new(VMLINUX_BTF);
    if !path.exists() {
        eprintln!("skipped: {VMLINUX_BTF} missing (kernel without BTF)");
        return;
    }
    let o = kernel_offsets().unwrap();
    assert_eq!(o.valid, 1);
    // struct sock_common's head has been the same since 4.x on every 64-bit kernel.
    assert_eq!((o.skc_daddr, o.skc_rcv_saddr), (0, 4));
    assert_eq!((o.skc_dport, o.skc_num, o.skc_family), (12, 14, 16));
    assert!(o.skc_v6_daddr >= 24 && o.skc_v6_daddr < 136, "{o:?}");
    assert_eq!(o.skc_v6_rcv_saddr, o.skc_v6_daddr + 16);
    // skc_state follows skc_family; tcp_sock's sequence numbers lie past its sock.
    assert_eq!((o.skc_state, o.isn_valid), (18, 1), "{o:?}");
    for f in [o.tcp_write_seq, o.tcp_rcv_nxt, o.tcp_bytes_received] {
        assert!(f > o.sock_protocol && f < 8192, "{o:?}");
    }
    assert!(o.tcp_write_seq.is_multiple_of(4) && o.tcp_rcv_nxt.is_multiple_of(4));
    assert!(o.tcp_bytes_received.is_multiple_of(8), "{o:?}");
    assert!(o.socket_sk < 64 && o.socket_sk.is_multiple_of(8), "{o:?}");
    assert!(o.task_files > 256 && o.task_files < 16 * 1024, "{o:?}");
    assert!(o.sock_protocol > 136 && o.sock_protocol < 2048, "{o:?}");
    assert!(
        o.fdtable_fd.is_multiple_of(8) && o.file_private_data.is_multiple_of(8),
        "{o:?}"
    );

    // Cross-check the direct members with bpftool, when it is installed.
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
        .output()
    else {
        eprintln!("bpftool not installed: cross-check skipped");
        return;
    };
    let raw = String::from_utf8_lossy(&out.stdout);
    for (strukt, member, ours) in [
        ("task_struct", "files", o.task_files),
        ("files_struct", "fdt", o.files_fdt),
        ("fdtable", "fd", o.fdtable_fd),
        ("fdtable", "max_fds", o.fdtable_max_fds),
        ("file", "private_data", o.file_private_data),
        ("socket", "sk", o.socket_sk),
        ("sock", "sk_protocol", o.sock_protocol),
        ("sock_common", "skc_family", o.skc_family),
        ("sock_common", "skc_v6_daddr", o.skc_v6_daddr),
        ("sock_common", "skc_v6_rcv_saddr", o.skc_v6_rcv_saddr),
        ("sock_common", "skc_state", o.skc_state),
        ("tcp_sock", "write_seq", o.tcp_write_seq),
        ("tcp_sock", "rcv_nxt", o.tcp_rcv_nxt),
        ("tcp_sock", "bytes_received", o.tcp_bytes_received),
    ] {
        let theirs = bpftool_offset(&raw, strukt, member)
            .unwrap_or_else(|| panic!("bpftool shows no {strukt}.{member}"));
        assert_eq!(ours * 8, theirs, "{strukt}.{member}");
    }
}
