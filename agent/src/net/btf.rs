//! Kernel struct offsets from BTF: the kernel programs walk task → files → fdtable → file → socket →
//! sock to read a connection's addresses (and, in `tcp_sock`, what its initial sequence numbers
//! are recovered from), and those layouts change between kernel builds. This is a
//! small, pure reader of the BTF format (docs.kernel.org/bpf/btf.html): the header, the type section
//! and the string section, of which only structs, unions, pointers, integers, arrays and the type
//! modifiers matter here. Every read is bounds-checked: malformed input is an error, never a panic.

use std::path::Path;

use loupe_common::socket::KernelOffsets;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Links of typedefs, modifiers or array elements followed at most (a loop in bad input ends here).
const MAX_CHAIN: usize = 32;
/// Anonymous struct/union levels searched at most for a member.
const MAX_NESTING: usize = 8;

mod btf_kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

/// Why offsets could not be read from BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or its header or sections are inconsistent.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// A type record is inconsistent.
    #[error("malformed BTF type {id}: {message}")]
    BadType { id: u32, message: String },
    /// No struct of that name (with members) is described.
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    /// The struct has no member of that name, directly or in anonymous members.
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    /// The member exists but not in the shape the kernel programs read.
    #[error("BTF member {field}: {message}")]
    Unexpected { field: String, message: String },
}

fn malformed(message: impl Into<String>) -> BtfError {
    BtfError::Malformed(message.into())
}

/// A struct or union member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Non-zero for a bitfield.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u8,
    name_off: u32,
    /// `size` for INT, STRUCT, UNION, ENUM, ENUM64, FLOAT; the referenced type id for the others.
    size_or_type: u32,
    /// INT: its bit count; ARRAY: its element count.
    extra: u32,
    /// ARRAY: the element type.
    elem_type: u32,
    /// STRUCT/UNION: range in `Btf::members`.
    members: std::ops::Range<usize>,
}

/// A parsed BTF blob: its types (id 1 is `types[0]`) and string section.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
}

/// A member resolved to a byte offset from the start of the outer struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    /// Size of the member's type in bytes (pointers count 8).
    pub size: u32,
    pub is_pointer: bool,
}

struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn u32_at(&self, at: usize) -> Option<u32> {
        let bytes: [u8; 4] = self.data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    }
}

/// Reads the running kernel's BTF and finds the offsets the socket programs need.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    offsets_from_file(Path::new(VMLINUX_BTF))
}

/// Reads a BTF file and finds the offsets the socket programs need.
pub fn offsets_from_file(path: &Path) -> Result<KernelOffsets, BtfError> {
    let data = std::fs::read(path).map_err(|source| BtfError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Btf::parse(&data)?.socket_offsets()
}

impl Btf {
    /// Parses a BTF blob (either byte order).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data
            .get(0..2)
            .ok_or_else(|| malformed(format!("{} bytes, shorter than a header", data.len())))?;
        let big_endian = match u16::from_le_bytes([magic[0], magic[1]]) {
            MAGIC => false,
            m if m.swap_bytes() == MAGIC => true,
            m => return Err(malformed(format!("bad magic {m:#06x}"))),
        };
        let r = Reader { data, big_endian };
        if data.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes, shorter than a header",
                data.len()
            )));
        }
        let field = |at: usize| r.u32_at(at).ok_or_else(|| malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(malformed(format!(
                "header length {hdr_len} below {HEADER_LEN}"
            )));
        }
        let section =
            |off: u32, len: u32, what: &str| -> Result<std::ops::Range<usize>, BtfError> {
                let start = hdr_len
                    .checked_add(off as usize)
                    .ok_or_else(|| malformed(format!("{what} section offset overflows")))?;
                let end = start
                    .checked_add(len as usize)
                    .filter(|&end| end <= data.len())
                    .ok_or_else(|| {
                        malformed(format!(
                            "{what} section ({len} bytes at {start}) runs past the end ({} bytes)",
                            data.len()
                        ))
                    })?;
                Ok(start..end)
            };
        let types_range = section(field(8)?, field(12)?, "type")?;
        let strings_range = section(field(16)?, field(20)?, "string")?;
        let strings = data[strings_range].to_vec();
        if strings.first().is_some_and(|&b| b != 0) {
            return Err(malformed(
                "string section does not start with an empty string",
            ));
        }

        let mut btf = Btf {
            types: Vec::new(),
            members: Vec::new(),
            strings,
        };
        let types = Reader {
            data: &data[types_range],
            big_endian,
        };
        let mut at = 0usize;
        while at < types.data.len() {
            let id = btf.types.len() as u32 + 1;
            let bad = |message: String| BtfError::BadType { id, message };
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (types.u32_at(at), types.u32_at(at + 4), types.u32_at(at + 8))
            else {
                return Err(bad(format!("truncated record at byte {at}")));
            };
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name_off,
                size_or_type,
                extra: 0,
                elem_type: 0,
                members: 0..0,
            };
            let trailing = match kind {
                btf_kind::INT => {
                    let encoding = types
                        .u32_at(at)
                        .ok_or_else(|| bad("truncated INT".into()))?;
                    t.extra = encoding & 0xff;
                    4
                }
                btf_kind::ARRAY => {
                    let (Some(elem), Some(nelems)) = (types.u32_at(at), types.u32_at(at + 8))
                    else {
                        return Err(bad("truncated ARRAY".into()));
                    };
                    t.elem_type = elem;
                    t.extra = nelems;
                    12
                }
                btf_kind::STRUCT | btf_kind::UNION => {
                    let len = vlen * 12;
                    if at + len > types.data.len() {
                        return Err(bad(format!("{vlen} members run past the type section")));
                    }
                    let first = btf.members.len();
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let (Some(name_off), Some(type_id), Some(offset)) =
                            (types.u32_at(m), types.u32_at(m + 4), types.u32_at(m + 8))
                        else {
                            return Err(bad("truncated member".into()));
                        };
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0x00ff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        btf.members.push(Member {
                            name_off,
                            type_id,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    t.members = first..btf.members.len();
                    len
                }
                btf_kind::ENUM => vlen * 8,
                btf_kind::FUNC_PROTO => vlen * 8,
                btf_kind::VAR | btf_kind::DECL_TAG => 4,
                btf_kind::DATASEC => vlen * 12,
                btf_kind::ENUM64 => vlen * 12,
                btf_kind::PTR
                | btf_kind::FWD
                | btf_kind::TYPEDEF
                | btf_kind::VOLATILE
                | btf_kind::CONST
                | btf_kind::RESTRICT
                | btf_kind::FUNC
                | btf_kind::FLOAT
                | btf_kind::TYPE_TAG => 0,
                other => return Err(bad(format!("unknown kind {other}"))),
            };
            at = at
                .checked_add(trailing)
                .filter(|&end| end <= types.data.len())
                .ok_or_else(|| bad("record runs past the type section".into()))?;
            btf.types.push(t);
        }
        Ok(btf)
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| BtfError::BadType {
                id,
                message: if id == 0 {
                    "void where a type was expected".into()
                } else {
                    format!("no such type ({} types)", self.types.len())
                },
            })
    }

    fn name(&self, name_off: u32) -> Result<&str, BtfError> {
        let tail = self
            .strings
            .get(name_off as usize..)
            .ok_or_else(|| malformed(format!("name offset {name_off} outside the strings")))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("name at {name_off} is not NUL-terminated")))?;
        std::str::from_utf8(&tail[..end])
            .map_err(|_| malformed(format!("name at {name_off} is not UTF-8")))
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, &Type), BtfError> {
        for _ in 0..MAX_CHAIN {
            let t = self.get(id)?;
            match t.kind {
                btf_kind::TYPEDEF
                | btf_kind::VOLATILE
                | btf_kind::CONST
                | btf_kind::RESTRICT
                | btf_kind::TYPE_TAG => id = t.size_or_type,
                _ => return Ok((id, t)),
            }
        }
        Err(BtfError::BadType {
            id,
            message: "typedef chain too long (a loop?)".into(),
        })
    }

    /// Size in bytes of a type; pointers are 8 bytes (the 64-bit kernels Loupe supports).
    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let mut id = id;
        let mut multiplier: u64 = 1;
        for _ in 0..MAX_CHAIN {
            let (resolved, t) = self.resolve(id)?;
            let base = match t.kind {
                btf_kind::PTR => 8,
                btf_kind::ARRAY => {
                    multiplier = multiplier.saturating_mul(u64::from(t.extra));
                    id = t.elem_type;
                    continue;
                }
                btf_kind::INT
                | btf_kind::STRUCT
                | btf_kind::UNION
                | btf_kind::ENUM
                | btf_kind::ENUM64
                | btf_kind::FLOAT => t.size_or_type,
                other => {
                    return Err(BtfError::BadType {
                        id: resolved,
                        message: format!("kind {other} has no size"),
                    });
                }
            };
            return u32::try_from(multiplier.saturating_mul(u64::from(base))).map_err(|_| {
                BtfError::BadType {
                    id: resolved,
                    message: "size overflows".into(),
                }
            });
        }
        Err(BtfError::BadType {
            id,
            message: "array nesting too deep".into(),
        })
    }

    /// The id of the first struct named `name` that has members (forward declarations have none).
    fn find_struct(&self, name: &str) -> Result<u32, BtfError> {
        for (i, t) in self.types.iter().enumerate() {
            if t.kind == btf_kind::STRUCT
                && !t.members.is_empty()
                && self.name(t.name_off).is_ok_and(|n| n == name)
            {
                return Ok(i as u32 + 1);
            }
        }
        Err(BtfError::NoStruct(name.to_string()))
    }

    /// Finds `name` among the members of struct/union `id`, descending into anonymous struct and
    /// union members as C does; returns the member with its bit offset from the start of `id`.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>, BtfError> {
        if depth > MAX_NESTING {
            return Ok(None);
        }
        let (_, t) = self.resolve(id)?;
        if t.kind != btf_kind::STRUCT && t.kind != btf_kind::UNION {
            return Ok(None);
        }
        for m in &self.members[t.members.clone()] {
            let member_name = self.name(m.name_off)?;
            if member_name == name {
                return Ok(Some(*m));
            }
            if member_name.is_empty()
                && let Some(inner) = self.find_member(m.type_id, name, depth + 1)?
            {
                return Ok(Some(Member {
                    bit_offset: m
                        .bit_offset
                        .checked_add(inner.bit_offset)
                        .ok_or_else(|| malformed(format!("offset of {name} overflows")))?,
                    ..inner
                }));
            }
        }
        Ok(None)
    }

    /// Byte offset, size and pointer-ness of `path` (member names, each looked up in the type of
    /// the previous one, anonymous members searched) within struct `strukt`.
    pub fn field(&self, strukt: &str, path: &[&str]) -> Result<Field, BtfError> {
        let describe = || format!("{strukt}.{}", path.join("."));
        let mut id = self.find_struct(strukt)?;
        let mut bit_offset: u64 = 0;
        let mut last = None;
        let mut owner = strukt.to_string();
        for name in path {
            let m = self
                .find_member(id, name, 0)?
                .ok_or_else(|| BtfError::NoMember {
                    strukt: owner.clone(),
                    member: name.to_string(),
                })?;
            if m.bitfield_size != 0 {
                return Err(BtfError::Unexpected {
                    field: describe(),
                    message: format!("{name} is a {}-bit bitfield", m.bitfield_size),
                });
            }
            bit_offset += u64::from(m.bit_offset);
            id = m.type_id;
            owner = name.to_string();
            last = Some(m);
        }
        let m = last.ok_or_else(|| BtfError::Unexpected {
            field: describe(),
            message: "empty member path".into(),
        })?;
        if !bit_offset.is_multiple_of(8) {
            return Err(BtfError::Unexpected {
                field: describe(),
                message: format!("bit offset {bit_offset} is not byte-aligned"),
            });
        }
        let (_, t) = self.resolve(m.type_id)?;
        if t.kind == btf_kind::INT && t.extra != 0 && t.extra % 8 != 0 {
            return Err(BtfError::Unexpected {
                field: describe(),
                message: format!("{}-bit integer", t.extra),
            });
        }
        let offset = u32::try_from(bit_offset / 8).map_err(|_| BtfError::Unexpected {
            field: describe(),
            message: "offset overflows".into(),
        })?;
        Ok(Field {
            offset,
            size: self.size_of(m.type_id)?,
            is_pointer: t.kind == btf_kind::PTR,
        })
    }

    /// The offsets of [`KernelOffsets`], each checked for the shape the kernel programs read
    /// (pointers where they follow a pointer, integer widths where they read an integer).
    pub fn socket_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let pointer = |strukt: &str, path: &[&str]| -> Result<u32, BtfError> {
            let f = self.field(strukt, path)?;
            if !f.is_pointer {
                return Err(BtfError::Unexpected {
                    field: format!("{strukt}.{}", path.join(".")),
                    message: "not a pointer".into(),
                });
            }
            Ok(f.offset)
        };
        let sized = |strukt: &str, path: &[&str], size: u32| -> Result<u32, BtfError> {
            let f = self.field(strukt, path)?;
            if f.size != size || f.is_pointer {
                return Err(BtfError::Unexpected {
                    field: format!("{strukt}.{}", path.join(".")),
                    message: format!("{} bytes where {size} were expected", f.size),
                });
            }
            Ok(f.offset)
        };
        let common = |member: &str, size: u32| sized("sock", &["__sk_common", member], size);
        // Kernels built without IPv6 have no v6 members, and no AF_INET6 sockets to read them for:
        // an offset no read can succeed at keeps the programs honest.
        let v6 = |member: &str| match common(member, 16) {
            Err(BtfError::NoMember { .. }) => {
                tracing::debug!("no sock_common.{member} in BTF: kernel without IPv6");
                Ok(u32::MAX)
            }
            other => other,
        };
        // The ISN fields are a feature of their own: without them OPEN events carry no ISNs
        // (same-host links fall back to addresses), the programs still load.
        let isn = || -> Result<[u32; 4], BtfError> {
            Ok([
                common("skc_state", 1)?,
                sized("tcp_sock", &["write_seq"], 4)?,
                sized("tcp_sock", &["rcv_nxt"], 4)?,
                sized("tcp_sock", &["bytes_received"], 8)?,
            ])
        };
        let (isn_valid, [skc_state, tcp_write_seq, tcp_rcv_nxt, tcp_bytes_received]) = match isn() {
            Ok(offsets) => (1, offsets),
            Err(e) => {
                tracing::info!(
                    "TCP sequence numbers not readable ({e}): same-host span links by address only"
                );
                (0, [0; 4])
            }
        };
        Ok(KernelOffsets {
            valid: 1,
            task_files: pointer("task_struct", &["files"])?,
            files_fdt: pointer("files_struct", &["fdt"])?,
            fdtable_fd: pointer("fdtable", &["fd"])?,
            fdtable_max_fds: sized("fdtable", &["max_fds"], 4)?,
            file_private_data: pointer("file", &["private_data"])?,
            socket_sk: pointer("socket", &["sk"])?,
            sock_protocol: sized("sock", &["sk_protocol"], 2)?,
            skc_family: common("skc_family", 2)?,
            skc_daddr: common("skc_daddr", 4)?,
            skc_rcv_saddr: common("skc_rcv_saddr", 4)?,
            skc_dport: common("skc_dport", 2)?,
            skc_num: common("skc_num", 2)?,
            skc_v6_daddr: v6("skc_v6_daddr")?,
            skc_v6_rcv_saddr: v6("skc_v6_rcv_saddr")?,
            skc_state,
            tcp_write_seq,
            tcp_rcv_nxt,
            tcp_bytes_received,
            isn_valid,
        })
    }
}

#[cfg(test)]
mod tests;
