//! Reads the running kernel's BTF (`/sys/kernel/btf/vmlinux`) for the struct offsets and
//! function signatures the kernel programs need.
//!
//! aya offers no CO-RE for Rust programs, so instead of relocating the object we look each field
//! up here and pass the offsets in as read-only globals. Only the small part of the BTF format
//! needed for that is parsed: types, struct/union members (through anonymous members) and
//! function prototypes.

use std::collections::HashMap;

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

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

struct Type {
    kind: u32,
    /// Struct/union members; empty for other kinds.
    members: Vec<Member>,
    /// FUNC and modifiers (typedef, const...): the type they refer to; FUNC_PROTO: its
    /// parameter count.
    link: u32,
}

/// The parsed kernel BTF.
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    structs: HashMap<String, u32>,
    functions: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("four bytes")))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::parse(&std::fs::read(VMLINUX)?)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let header_len = u32_at(data, 4)? as usize;
        let type_start = header_len + u32_at(data, 8)? as usize;
        let type_end = type_start + u32_at(data, 12)? as usize;
        let str_start = header_len + u32_at(data, 16)? as usize;
        let str_end = str_start + u32_at(data, 20)? as usize;
        let strings = data
            .get(str_start..str_end)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let section = data
            .get(type_start..type_end)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let mut btf = Btf {
            strings,
            // Type id 0 is `void`.
            types: vec![Type {
                kind: 0,
                members: Vec::new(),
                link: 0,
            }],
            structs: HashMap::new(),
            functions: HashMap::new(),
        };
        let mut at = 0;
        while at < section.len() {
            at = btf.parse_type(section, at)?;
        }
        Ok(btf)
    }

    /// Parses the type at `at` and returns where the next one starts.
    fn parse_type(&mut self, section: &[u8], at: usize) -> Result<usize, BtfError> {
        let name = u32_at(section, at)?;
        let info = u32_at(section, at + 4)?;
        let size_or_type = u32_at(section, at + 8)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let body = at + 12;
        let mut members = Vec::new();
        let mut link = 0;
        let next = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => body + 4,
            KIND_ARRAY => body + 12,
            KIND_STRUCT | KIND_UNION => {
                for index in 0..vlen {
                    let member = body + index * 12;
                    let offset = u32_at(section, member + 8)?;
                    members.push(Member {
                        name: u32_at(section, member)?,
                        type_id: u32_at(section, member + 4)?,
                        bit_offset: if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        },
                        bitfield_size: if kind_flag { offset >> 24 } else { 0 },
                    });
                }
                body + vlen * 12
            }
            KIND_ENUM => body + vlen * 8,
            KIND_FUNC_PROTO => {
                link = vlen as u32;
                body + vlen * 8
            }
            KIND_DATASEC | KIND_ENUM64 => body + vlen * 12,
            KIND_FUNC | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_TYPE_TAG => {
                link = size_or_type;
                body
            }
            _ => body,
        };
        let id = self.types.len() as u32;
        if name != 0 && (kind == KIND_STRUCT || kind == KIND_FUNC) {
            let text = self.string(name).to_string();
            let index = if kind == KIND_STRUCT {
                &mut self.structs
            } else {
                &mut self.functions
            };
            index.entry(text).or_insert(id);
        }
        self.types.push(Type {
            kind,
            members,
            link,
        });
        Ok(next)
    }

    fn string(&self, offset: u32) -> &str {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous struct/union members.
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find_member(id, field) {
            Some((bit_offset, 0)) if bit_offset % 8 == 0 => Ok(bit_offset / 8),
            Some(_) => Err(BtfError::Bitfield(name.into(), field.into())),
            None => Err(BtfError::NoField(name.into(), field.into())),
        }
    }

    fn find_member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let ty = self.types.get(id as usize)?;
        for member in &ty.members {
            if member.name != 0 {
                if self.string(member.name) == field {
                    return Some((member.bit_offset, member.bitfield_size));
                }
                continue;
            }
            let inner = self.strip_modifiers(member.type_id);
            if let Some((offset, size)) = self.find_member(inner, field) {
                return Some((member.bit_offset + offset, size));
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
            match self.types.get(id as usize) {
                Some(ty) if MODIFIERS.contains(&ty.kind) => id = ty.link,
                _ => break,
            }
        }
        id
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// How many parameters the kernel function takes: the index of its return value in a
    /// fexit program's context.
    pub fn parameter_count(&self, name: &str) -> Result<u32, BtfError> {
        let func = self
            .functions
            .get(name)
            .and_then(|&id| self.types.get(id as usize))
            .ok_or_else(|| BtfError::NoFunction(name.into()))?;
        self.types
            .get(func.link as usize)
            .filter(|proto| proto.kind == KIND_FUNC_PROTO)
            .map(|proto| proto.link)
            .ok_or(BtfError::Malformed("FUNC without prototype"))
    }
}

/// Everything the kernel programs read, located in this kernel.
pub fn offsets(btf: &Btf) -> Result<Offsets, BtfError> {
    let common = |field: &str| -> Result<u32, BtfError> {
        Ok(btf.field_offset("sock", "__sk_common")? + btf.field_offset("sock_common", field)?)
    };
    let arg_count = |name: &str| btf.parameter_count(name).unwrap_or(0);
    Ok(Offsets {
        skc_family: common("skc_family")?,
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
        regs_arg0: btf.field_offset("pt_regs", "di").unwrap_or(0),
        regs_arg1: btf.field_offset("pt_regs", "si").unwrap_or(0),
        regs_syscall_nr: btf.field_offset("pt_regs", "orig_ax").unwrap_or(0),
        fexit_ret_bind: arg_count("__inet_bind"),
        fexit_ret_bind6: arg_count("__inet6_bind"),
        fexit_ret_hash_connect: arg_count("__inet_hash_connect"),
        fexit_ret_autobind: arg_count("inet_autobind"),
        fexit_ret_accept: arg_count("inet_csk_accept"),
        fexit_ret_listen: arg_count("inet_csk_listen_start"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF must yield offsets that agree with what we know of every kernel:
    /// `sock_common` starts `struct sock`, and the family precedes the ports.
    #[test]
    fn reads_this_kernels_socket_layout() {
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let offsets = offsets(&btf).expect("offsets");
        assert_eq!(btf.field_offset("sock", "__sk_common").unwrap(), 0);
        assert!(offsets.skc_family < offsets.sk_protocol);
        assert!(offsets.skc_num > offsets.skc_daddr);
        assert_eq!(btf.parameter_count("tcp_v4_connect").unwrap(), 3);
        assert!(btf.has_function("inet_csk_accept"));
        assert!(!btf.has_function("no_such_kernel_function"));
    }
}
