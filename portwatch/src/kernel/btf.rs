//! Reads the running kernel's BTF (`/sys/kernel/btf/vmlinux`) for the struct offsets and
//! function signatures the kernel programs need.
//!
//! aya offers no CO-RE for Rust programs, so instead of relocating the object we look each field
//! up here and pass the offsets in as read-only globals. Only the small part of the BTF format
//! needed for that is parsed: type records, struct/union members (through anonymous members)
//! and function prototypes. The file stays as read, with an index of just the structs,
//! functions and typedefs we will look up, so that parsing allocates nothing per type.

use std::{collections::HashMap, ffi::CStr};

use portwatch_ebpf::Offsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {VMLINUX} (the kernel needs CONFIG_DEBUG_INFO_BTF=y): {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("{VMLINUX} is not valid BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's struct {0} has no field {1}")]
    NoField(String, String),
    #[error("the kernel's {0}.{1} is a bitfield, which portwatch cannot read")]
    Bitfield(String, String),
    #[error("the kernel has no function {0} in its BTF")]
    NoFunction(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const HEADER_LEN: usize = 24;
/// How many members one field lookup may visit. The kernel's structs need a few hundred; a
/// corrupt BTF whose anonymous members refer back to their own struct would otherwise make the
/// search exponential in the nesting depth (the fuzzer found one that took 17 s).
const MEMBER_VISITS: u32 = 1 << 16;
const RECORD_LEN: usize = 12;

/// The kernel's BTF, kept as the bytes it came as, with the start of every type record.
pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset of each type record, indexed by type id (id 0, `void`, has none: 0).
    records: Vec<usize>,
    /// The wanted names, with the (kind, type id) of each struct, function or typedef of
    /// that name.
    named: HashMap<&'static str, Vec<(u32, u32)>>,
}

/// One type record's fixed part.
#[derive(Clone, Copy)]
struct Record {
    at: usize,
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("four bytes")))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Parses the kernel's BTF, indexing the structs [`offsets`] reads and `names` (functions
    /// and typedefs).
    pub fn from_sys_fs(names: &[&'static str]) -> Result<Self, BtfError> {
        Self::parse(std::fs::read(VMLINUX)?, names)
    }

    pub fn parse(data: Vec<u8>, names: &[&'static str]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let header_len = u32_at(&data, 4)? as usize;
        let type_start = header_len + u32_at(&data, 8)? as usize;
        let type_end = type_start + u32_at(&data, 12)? as usize;
        let str_start = header_len + u32_at(&data, 16)? as usize;
        let str_end = str_start + u32_at(&data, 20)? as usize;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("section out of bounds"));
        }
        // By bytes, with a fast hash: this lookup runs for some 80,000 named records of the
        // kernel's BTF, most of start-up's time in this parse.
        let wanted: foldhash::HashMap<&[u8], &'static str> = STRUCTS
            .iter()
            .chain(names)
            .map(|name| (name.as_bytes(), *name))
            .collect();
        let mut btf = Btf {
            data,
            strings: str_start..str_end,
            records: vec![0],
            named: HashMap::new(),
        };
        let mut named: HashMap<&'static str, Vec<(u32, u32)>> = HashMap::new();
        let mut at = type_start;
        while at < type_end {
            let record = btf.record_at(at)?;
            if matches!(record.kind, KIND_STRUCT | KIND_FUNC | KIND_TYPEDEF)
                && let Some(&name) = wanted.get(btf.string_bytes(record.name))
            {
                named
                    .entry(name)
                    .or_default()
                    .push((record.kind, btf.records.len() as u32));
            }
            btf.records.push(at);
            at = btf.next_record(record)?;
        }
        btf.named = named;
        Ok(btf)
    }

    fn record_at(&self, at: usize) -> Result<Record, BtfError> {
        let info = u32_at(&self.data, at + 4)?;
        Ok(Record {
            at,
            name: u32_at(&self.data, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(&self.data, at + 8)?,
        })
    }

    /// Where the record after this one starts: the fixed part plus the kind's trailing data.
    fn next_record(&self, record: Record) -> Result<usize, BtfError> {
        let body = record.at + RECORD_LEN;
        let trailing = match record.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => record.vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => record.vlen * 8,
            0 | 20.. => return Err(BtfError::Malformed("unknown type kind")),
            _ => 0,
        };
        Ok(body + trailing)
    }

    fn record(&self, id: u32) -> Option<Record> {
        let at = *self.records.get(id as usize).filter(|&&at| at != 0)?;
        self.record_at(at).ok()
    }

    /// A name's bytes, up to its NUL (found word by word, not byte by byte).
    fn string_bytes(&self, offset: u32) -> &[u8] {
        let tail = self.data[self.strings.clone()]
            .get(offset as usize..)
            .unwrap_or_default();
        CStr::from_bytes_until_nul(tail).map_or(tail, CStr::to_bytes)
    }

    fn string(&self, offset: u32) -> &str {
        std::str::from_utf8(self.string_bytes(offset)).unwrap_or("")
    }

    /// The id of the named struct, function or typedef (the first, as aya also takes it).
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        self.named
            .get(name)?
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|&(_, id)| id)
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous struct/union members.
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .find(KIND_STRUCT, name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        let mut budget = MEMBER_VISITS;
        match self.find_member(id, field, 0, &mut budget) {
            Some((bit_offset, 0)) if bit_offset % 8 == 0 => Ok(bit_offset / 8),
            Some(_) => Err(BtfError::Bitfield(name.into(), field.into())),
            None => Err(BtfError::NoField(name.into(), field.into())),
        }
    }

    /// (bit offset, bitfield size) of a member, searching anonymous members `depth` levels down,
    /// visiting at most `budget` members in all.
    fn find_member(
        &self,
        id: u32,
        field: &str,
        depth: u32,
        budget: &mut u32,
    ) -> Option<(u32, u32)> {
        let record = self.record(id)?;
        if depth > 8 || (record.kind != KIND_STRUCT && record.kind != KIND_UNION) {
            return None;
        }
        for index in 0..record.vlen {
            *budget = budget.checked_sub(1)?;
            let member = record.at + RECORD_LEN + index * 12;
            let name = u32_at(&self.data, member).ok()?;
            let type_id = u32_at(&self.data, member + 4).ok()?;
            let offset = u32_at(&self.data, member + 8).ok()?;
            let (bit_offset, bitfield_size) = if record.kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            if name != 0 {
                if self.string(name) == field {
                    return Some((bit_offset, bitfield_size));
                }
                continue;
            }
            let inner = self.strip_modifiers(type_id);
            if let Some((offset, size)) = self.find_member(inner, field, depth + 1, budget) {
                return Some((bit_offset + offset, size));
            }
        }
        None
    }

    /// Skips typedefs and qualifiers (volatile, const, restrict, type tags) to the real type.
    fn strip_modifiers(&self, mut id: u32) -> u32 {
        const MODIFIERS: [u32; 5] = [
            KIND_TYPEDEF,
            KIND_VOLATILE,
            KIND_CONST,
            KIND_RESTRICT,
            KIND_TYPE_TAG,
        ];
        // Bounded: a malformed BTF with a modifier cycle must not hang us.
        for _ in 0..32 {
            match self.record(id) {
                Some(record) if MODIFIERS.contains(&record.kind) => id = record.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// How many parameters the kernel function takes: the index of its return value in a
    /// fexit program's context.
    pub fn parameter_count(&self, name: &str) -> Result<u32, BtfError> {
        let func = self
            .find(KIND_FUNC, name)
            .and_then(|id| self.record(id))
            .ok_or_else(|| BtfError::NoFunction(name.into()))?;
        self.record(func.size_or_type)
            .filter(|proto| proto.kind == KIND_FUNC_PROTO)
            .map(|proto| proto.vlen as u32)
            .ok_or(BtfError::Malformed("FUNC without prototype"))
    }

    /// A BTF blob with the same type ids as the kernel's, in which only the named functions and
    /// typedefs survive and every other type is an empty pointer record.
    ///
    /// aya needs a parsed `Btf` only to look up attach points by name; the kernel checks them
    /// against its own BTF by id. Handing aya this skeleton instead of the whole kernel BTF saves
    /// some 25 MB of memory and most of the parse time, because the ids are all that must match.
    pub fn attach_points_only(&self, names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut types = Vec::with_capacity(self.records.len() * RECORD_LEN);
        let wanted: HashMap<u32, &str> = names
            .iter()
            .flat_map(|name| {
                [KIND_FUNC, KIND_TYPEDEF].map(|kind| self.find(kind, name).map(|id| (id, *name)))
            })
            .flatten()
            .collect();
        for id in 1..self.records.len() as u32 {
            let kept = wanted.get(&id).and_then(|_| self.record(id));
            let (name, info) = match kept {
                Some(record) => {
                    let name = strings.len() as u32;
                    strings.extend_from_slice(self.string(record.name).as_bytes());
                    strings.push(0);
                    // Keep the kind (and FUNC linkage in vlen); point at `void`.
                    (name, (record.kind << 24) | record.vlen as u32)
                }
                None => (0, KIND_PTR << 24),
            };
            for word in [name, info, 0] {
                types.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut blob = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
        blob.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        for word in [HEADER_LEN as u32, 0, types.len() as u32, types.len() as u32] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }
}

/// The structs [`offsets`] reads fields of.
const STRUCTS: [&str; 12] = [
    "sock",
    "sock_common",
    "net",
    "ns_common",
    "inet_sock",
    "task_struct",
    "files_struct",
    "fdtable",
    "file",
    "socket",
    "timer_list",
    "inet_timewait_sock",
];

/// Everything the kernel programs read, located in this kernel.
pub fn offsets(btf: &Btf) -> Result<Offsets, BtfError> {
    let common = |field: &str| -> Result<u32, BtfError> {
        Ok(btf.field_offset("sock", "__sk_common")? + btf.field_offset("sock_common", field)?)
    };
    Ok(Offsets {
        skc_family: common("skc_family")?,
        skc_state: common("skc_state")?,
        skc_num: common("skc_num")?,
        skc_dport: common("skc_dport")?,
        skc_rcv_saddr: common("skc_rcv_saddr")?,
        skc_daddr: common("skc_daddr")?,
        skc_v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
        skc_v6_daddr: common("skc_v6_daddr")?,
        skc_net: common("skc_net")?,
        net_ns_inum: btf.field_offset("net", "ns")? + btf.field_offset("ns_common", "inum")?,
        sk_protocol: btf.field_offset("sock", "sk_protocol")?,
        inet_sport: btf.field_offset("inet_sock", "inet_sport")?,
        task_files: btf.field_offset("task_struct", "files")?,
        files_fdt: btf.field_offset("files_struct", "fdt")?,
        fdt_fd: btf.field_offset("fdtable", "fd")?,
        fdt_max_fds: btf.field_offset("fdtable", "max_fds")?,
        file_private_data: btf.field_offset("file", "private_data")?,
        socket_file: btf.field_offset("socket", "file")?,
        socket_sk: btf.field_offset("socket", "sk")?,
        timer_function: btf.field_offset("timer_list", "function").unwrap_or(0),
        tw_timer: btf
            .field_offset("inet_timewait_sock", "tw_timer")
            .unwrap_or(0),
        task_real_parent: btf.field_offset("task_struct", "real_parent")?,
        task_tgid: btf.field_offset("task_struct", "tgid")?,
        task_group_leader: btf.field_offset("task_struct", "group_leader")?,
        task_start_boottime: btf
            .field_offset("task_struct", "start_boottime")
            .or_else(|_| btf.field_offset("task_struct", "real_start_time"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF must yield offsets that agree with what we know of every kernel:
    /// `sock_common` starts `struct sock`, and the family precedes the ports.
    #[test]
    fn reads_this_kernels_socket_layout() {
        let btf = Btf::from_sys_fs(&["tcp_v4_connect", "inet_csk_accept"]).expect("kernel BTF");
        let offsets = offsets(&btf).expect("offsets");
        assert_eq!(btf.field_offset("sock", "__sk_common").unwrap(), 0);
        assert!(offsets.skc_family < offsets.sk_protocol);
        assert!(offsets.skc_num > offsets.skc_daddr);
        assert_eq!(btf.parameter_count("tcp_v4_connect").unwrap(), 3);
        assert!(btf.parameter_count("inet_csk_accept").is_ok());
        assert!(matches!(
            btf.parameter_count("no_such_kernel_function"),
            Err(BtfError::NoFunction(name)) if name == "no_such_kernel_function"
        ));
    }

    /// The skeleton keeps every id: aya must find each named type at its kernel id.
    #[test]
    fn attach_point_skeleton_keeps_kernel_ids() {
        let names = ["inet_csk_accept", "btf_trace_inet_sock_set_state"];
        let btf = Btf::from_sys_fs(&names).expect("kernel BTF");
        let skeleton = aya::Btf::parse(&btf.attach_points_only(&names), aya::Endianness::Little)
            .expect("aya parses the skeleton");
        let accept = skeleton
            .id_by_type_name_kind("inet_csk_accept", aya_obj::btf::BtfKind::Func)
            .expect("function kept");
        assert_eq!(Some(accept), btf.find(KIND_FUNC, "inet_csk_accept"));
        let tracepoint = skeleton
            .id_by_type_name_kind(
                "btf_trace_inet_sock_set_state",
                aya_obj::btf::BtfKind::Typedef,
            )
            .expect("typedef kept");
        assert_eq!(
            Some(tracepoint),
            btf.find(KIND_TYPEDEF, "btf_trace_inet_sock_set_state")
        );
    }

    /// A BTF blob written by hand, so the reader is tested on known bytes rather than on
    /// whatever kernel runs the tests.
    #[derive(Default)]
    struct Fixture {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                strings: vec![0],
                next_id: 1,
                ..Fixture::default()
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            offset
        }

        /// Appends a type record with `trailing` words after its fixed part; returns its id.
        fn record(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            trailing: &[u32],
        ) -> u32 {
            let name = self.name(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for word in [name, info, size_or_type].iter().chain(trailing) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            self.record(name, KIND_INT, false, 0, bytes, &[bytes * 8])
        }

        /// A struct or union whose members are (name, type, bit offset, bitfield size).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|&(_, _, _, bits)| bits != 0);
            let mut trailing = Vec::new();
            for &(member, type_id, bit_offset, bits) in members {
                let offset = if kind_flag {
                    (bits << 24) | bit_offset
                } else {
                    bit_offset
                };
                trailing.extend([self.name(member), type_id, offset]);
            }
            self.record(name, kind, kind_flag, members.len() as u32, size, &trailing)
        }

        fn function(&mut self, name: &str, parameters: u32, int: u32) -> u32 {
            let trailing: Vec<u32> = (0..parameters).flat_map(|_| [0, int]).collect();
            let proto = self.record("", KIND_FUNC_PROTO, false, parameters, int, &trailing);
            self.record(name, KIND_FUNC, false, 1, proto, &[])
        }

        fn blob(&self) -> Vec<u8> {
            let mut blob = vec![0x9f, 0xeb, 1, 0];
            let types = self.types.len() as u32;
            for word in [
                HEADER_LEN as u32,
                0,
                types,
                types,
                self.strings.len() as u32,
            ] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// A `struct sock` shaped like the kernel's before 5.6 (`sk_protocol` an 8-bit bitfield
    /// after `sk_userlocks`), with `__sk_common` holding `skc_num` inside an anonymous union
    /// reached through a const qualifier, and a three-parameter function.
    fn fixture() -> Vec<u8> {
        let mut btf = Fixture::new();
        let u16_type = btf.int("u16", 2);
        let u32_type = btf.int("unsigned int", 4);
        let ports = btf.composite(
            KIND_STRUCT,
            "",
            4,
            &[("skc_dport", u16_type, 0, 0), ("skc_num", u16_type, 16, 0)],
        );
        let union = btf.composite(
            KIND_UNION,
            "",
            4,
            &[("skc_portpair", u32_type, 0, 0), ("", ports, 0, 0)],
        );
        let constant = btf.record("", KIND_CONST, false, 0, union, &[]);
        let common = btf.composite(
            KIND_STRUCT,
            "sock_common",
            16,
            &[("skc_family", u16_type, 0, 0), ("", constant, 64, 0)],
        );
        btf.composite(
            KIND_STRUCT,
            "sock",
            32,
            &[
                ("__sk_common", common, 0, 0),
                ("sk_userlocks", u32_type, 128, 4),
                ("sk_protocol", u32_type, 136, 8),
                ("sk_type", u32_type, 144, 16),
                ("sk_rcvbuf", u32_type, 160, 0),
            ],
        );
        btf.function("tcp_v4_connect", 3, u32_type);
        btf.blob()
    }

    #[test]
    fn reads_offsets_through_anonymous_members_and_qualifiers() {
        let btf = Btf::parse(fixture(), &["tcp_v4_connect"]).expect("fixture parses");
        assert_eq!(btf.field_offset("sock", "__sk_common").unwrap(), 0);
        assert_eq!(btf.field_offset("sock_common", "skc_family").unwrap(), 0);
        assert_eq!(btf.field_offset("sock_common", "skc_portpair").unwrap(), 8);
        assert_eq!(btf.field_offset("sock_common", "skc_num").unwrap(), 10);
        // A member after bitfields in a kind_flag struct: its offset is in bits, size 0.
        assert_eq!(btf.field_offset("sock", "sk_rcvbuf").unwrap(), 20);
        assert_eq!(btf.parameter_count("tcp_v4_connect").unwrap(), 3);
    }

    #[test]
    fn a_bitfield_is_refused_by_name() {
        let btf = Btf::parse(fixture(), &[]).expect("fixture parses");
        assert!(matches!(
            btf.field_offset("sock", "sk_protocol"),
            Err(BtfError::Bitfield(s, f)) if s == "sock" && f == "sk_protocol"
        ));
        assert!(matches!(
            btf.field_offset("sock", "sk_nothing"),
            Err(BtfError::NoField(..))
        ));
        assert!(matches!(
            btf.field_offset("task_struct", "files"),
            Err(BtfError::NoStruct(_))
        ));
        // The whole offsets table names the first thing it cannot find.
        assert!(
            matches!(offsets(&btf), Err(BtfError::NoField(s, f)) if s == "sock_common" && f == "skc_state")
        );
    }

    /// A struct made only of anonymous members of its own type: without a bound on the search,
    /// 40 members nested 8 deep would be 40^8 visits.
    #[test]
    fn a_self_nesting_struct_is_searched_in_bounded_time() {
        let mut btf = Fixture::new();
        let itself = btf.next_id;
        let members: Vec<(&str, u32, u32, u32)> = (0..40).map(|_| ("", itself, 0, 0)).collect();
        btf.composite(KIND_STRUCT, "sock", 4, &members);
        let btf = Btf::parse(btf.blob(), &[]).expect("parses");
        // Without the bound this would not finish.
        assert!(matches!(
            btf.field_offset("sock", "sk_protocol"),
            Err(BtfError::NoField(..))
        ));
    }

    /// Every truncation and every single-byte corruption of the fixture gives a value or an
    /// error, never a panic or a hang.
    #[test]
    fn corrupt_or_truncated_blobs_never_panic() {
        let blob = fixture();
        let lookups = |btf: &Btf| {
            let _ = btf.field_offset("sock", "sk_rcvbuf");
            let _ = btf.field_offset("sock_common", "skc_num");
            let _ = btf.parameter_count("tcp_v4_connect");
            let _ = btf.attach_points_only(&["tcp_v4_connect"]);
        };
        for len in 0..blob.len() {
            if let Ok(btf) = Btf::parse(blob[..len].to_vec(), &["tcp_v4_connect"]) {
                lookups(&btf);
            }
        }
        for at in 0..blob.len() {
            for flip in [0xff, 0x80, 0x01] {
                let mut corrupt = blob.clone();
                corrupt[at] ^= flip;
                if let Ok(btf) = Btf::parse(corrupt, &["tcp_v4_connect"]) {
                    lookups(&btf);
                }
            }
        }
        let error = Btf::parse(blob[..30].to_vec(), &[])
            .err()
            .expect("truncated");
        assert_eq!(
            error.to_string(),
            format!("{VMLINUX} is not valid BTF: section out of bounds")
        );
    }
}
