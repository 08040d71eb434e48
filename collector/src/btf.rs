//! Just enough of a BTF reader to find struct member offsets in the running kernel
//! (`/sys/kernel/btf/vmlinux`), so programs can read kernel structs without CO-RE.
//!
//! Format: a header, a type section (`btf_type` records with kind-specific trailers) and a
//! string section; see the kernel's Documentation/bpf/btf.rst.

use std::path::Path;

const MAGIC: u16 = 0xeb9f;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;

/// Why a member offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not BTF, or truncated.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// The struct or member is not there.
    #[error("no member {member} in struct {strukt} in the kernel's BTF")]
    NotFound {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
    /// The member is there, but not a pointer (a program would follow it).
    #[error("member {member} of struct {strukt} is not a pointer in the kernel's BTF")]
    NotAPointer {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
}

#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Offset of the first member record (for structs and unions).
    members_at: usize,
}

/// Parsed type index over a BTF blob.
pub struct Btf {
    data: Vec<u8>,
    str_at: usize,
    str_len: usize,
    /// `types[id - 1]`: type ids start at 1.
    types: Vec<Type>,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    d.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// BTF from a file.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path)
            .map_err(|source| BtfError::Io { path: path.display().to_string(), source })?;
        Self::parse(data)
    }

    /// BTF from bytes (little-endian, as on x86_64 and arm64).
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let bad = BtfError::Malformed;
        if u16_at(&data, 0) != Some(MAGIC) {
            return Err(bad("bad magic"));
        }
        let hdr_len = u32_at(&data, 4).ok_or(bad("short header"))? as usize;
        let type_off = u32_at(&data, 8).ok_or(bad("short header"))? as usize;
        let type_len = u32_at(&data, 12).ok_or(bad("short header"))? as usize;
        let str_off = u32_at(&data, 16).ok_or(bad("short header"))? as usize;
        let str_len = u32_at(&data, 20).ok_or(bad("short header"))? as usize;
        let (types_start, str_at) = (hdr_len + type_off, hdr_len + str_off);
        if data.len() < str_at + str_len || data.len() < types_start + type_len {
            return Err(bad("sections past the end"));
        }
        let mut types = Vec::new();
        let mut at = types_start;
        let end = types_start + type_len;
        while at < end {
            let name_off = u32_at(&data, at).ok_or(bad("truncated type"))?;
            let info = u32_at(&data, at + 4).ok_or(bad("truncated type"))?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let members_at = at + 12;
            let trailer = match kind {
                1 => 4,             // INT
                3 => 12,            // ARRAY
                4 | 5 => 12 * vlen, // STRUCT, UNION
                6 => 8 * vlen,      // ENUM
                13 => 8 * vlen,     // FUNC_PROTO
                14 => 4,            // VAR
                15 => 12 * vlen,    // DATASEC
                17 => 4,            // DECL_TAG
                19 => 12 * vlen,    // ENUM64
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(bad("unknown type kind")),
            };
            types.push(Type { name_off, kind, vlen, kind_flag: info >> 31 == 1, members_at });
            at = members_at + trailer;
        }
        Ok(Btf { data, str_at, str_len, types })
    }

    fn name(&self, off: u32) -> &str {
        let start = self.str_at + off as usize;
        let end_max = self.str_at + self.str_len;
        let bytes = &self.data[start.min(end_max)..end_max];
        let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..n]).unwrap_or("")
    }

    /// Whether the kernel has a BTF tracepoint (`tp_btf`) named `event`: each tracepoint
    /// gets a `btf_trace_<event>` typedef, which is what a `tp_btf` program is checked against.
    pub fn has_btf_tracepoint(&self, event: &str) -> bool {
        self.types.iter().any(|t| {
            t.kind == KIND_TYPEDEF && self.name(t.name_off).strip_prefix("btf_trace_") == Some(event)
        })
    }

    /// Byte offset of `member` in `struct strukt`, looking inside anonymous structs/unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<usize, BtfError> {
        self.member(strukt, member).map(|(offset, _)| offset)
    }

    /// Like [`Btf::member_offset`], for a member that must be a pointer: a program that
    /// follows it would be refused where the kernel embeds the struct instead.
    pub fn pointer_member_offset(&self, strukt: &str, member: &str) -> Result<usize, BtfError> {
        let (offset, type_id) = self.member(strukt, member)?;
        match self.resolve(type_id) {
            Some(t) if t.kind == KIND_PTR => Ok(offset),
            _ => Err(BtfError::NotAPointer { strukt: strukt.into(), member: member.into() }),
        }
    }

    /// Byte offset and type id of `member` in `struct strukt`.
    fn member(&self, strukt: &str, member: &str) -> Result<(usize, usize), BtfError> {
        let not_found = || BtfError::NotFound { strukt: strukt.into(), member: member.into() };
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == strukt)
            .ok_or_else(not_found)?;
        let (bits, type_id) = self.find_member(*t, member, 0, 0).ok_or_else(not_found)?;
        if bits % 8 != 0 {
            return Err(not_found());
        }
        Ok((bits / 8, type_id))
    }

    /// The bit offset and type id of `member`.
    fn find_member(&self, t: Type, member: &str, base_bits: usize, depth: usize) -> Option<(usize, usize)> {
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen {
            let at = t.members_at + 12 * i;
            let name_off = u32_at(&self.data, at)?;
            let type_id = u32_at(&self.data, at + 4)? as usize;
            let raw = u32_at(&self.data, at + 8)? as usize;
            let bits = base_bits + if t.kind_flag { raw & 0xff_ffff } else { raw };
            let name = self.name(name_off);
            if name == member {
                return Some((bits, type_id));
            }
            if name.is_empty() {
                let inner = self.resolve(type_id)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, bits, depth + 1)
                {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: usize) -> Option<Type> {
        for _ in 0..16 {
            let t = *self.types.get(id.checked_sub(1)?)?;
            match t.kind {
                8..=11 | 18 => id = u32_at(&self.data, t.members_at - 4)? as usize,
                _ => return Some(t),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sock_common_members_in_the_running_kernel() {
        let btf = Btf::from_sys_fs().expect("kernel BTF (the project requires CONFIG_DEBUG_INFO_BTF)");
        // These have been stable for decades; they validate the parser.
        assert_eq!(btf.member_offset("sock_common", "skc_family").unwrap(), 16);
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        // Inside an anonymous union.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        // Inside an anonymous struct in an anonymous union, after two u32.
        assert_eq!(btf.member_offset("tcp_skb_cb", "tcp_gso_segs").unwrap(), 8);
        let proto = btf.member_offset("sock", "sk_protocol").unwrap();
        assert!(proto > 16 && proto < 1024, "{proto}");
        assert!(matches!(btf.member_offset("sock", "no_such_member"), Err(BtfError::NotFound { .. })));
    }

    /// The block programs follow `request.q`, `request_queue.disk` and `gendisk.part0`; a
    /// member that is a struct, not a pointer to one, is told apart.
    #[test]
    fn tells_pointer_members_from_embedded_ones() {
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        for (strukt, member) in [("request", "q"), ("request_queue", "disk"), ("gendisk", "part0")] {
            let offset = btf.pointer_member_offset(strukt, member).unwrap();
            assert_eq!(offset, btf.member_offset(strukt, member).unwrap(), "{strukt}.{member}");
        }
        // `task_struct.se` is an embedded `struct sched_entity`; `comm` an array.
        for member in ["se", "comm"] {
            let e = btf.pointer_member_offset("task_struct", member).unwrap_err();
            assert!(matches!(e, BtfError::NotAPointer { .. }), "{member}: {e}");
        }
    }

    #[test]
    fn knows_which_btf_tracepoints_the_running_kernel_has() {
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        for event in ["sched_switch", "sys_exit", "mm_page_alloc", "sock_send_length"] {
            assert!(btf.has_btf_tracepoint(event), "{event}");
        }
        assert!(!btf.has_btf_tracepoint("no_such_event"));
        assert!(!btf.has_btf_tracepoint("sched"), "a prefix is not a tracepoint");
    }

    #[test]
    fn refuses_garbage() {
        assert!(Btf::parse(vec![0; 64]).is_err());
        assert!(Btf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0]).is_err());
    }
}
