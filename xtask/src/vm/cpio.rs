//! The initramfs archive format: cpio "newc" (SVR4 without checksums), which the kernel unpacks
//! into its root file system before running `/init`.
//!
//! Written here instead of piping a staging directory through the host's `cpio`: the image then
//! needs no staging directory and no extra host package, and holds exactly the members added, all
//! owned by root whatever user builds it.

use std::io::{self, Write};

/// What one archive member is.
pub enum Member<'a> {
    Directory,
    File { executable: bool, data: &'a [u8] },
}

/// Writes members in the order given. The kernel creates each member as it reads it and does not
/// create missing parents, so a directory must come before what it contains.
pub struct Writer<W: Write> {
    out: W,
    next_inode: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, next_inode: 1 }
    }

    /// Appends `path` (relative to the guest's root, no leading slash).
    pub fn append(&mut self, path: &str, member: Member) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        match member {
            Member::Directory => self.header(inode, 0o040_755, 2, path, 0),
            Member::File { executable, data } => {
                let mode = if executable { 0o100_755 } else { 0o100_644 };
                self.header(inode, mode, 1, path, data.len())?;
                self.out.write_all(data)?;
                self.pad(data.len())
            }
        }
    }

    /// Ends the archive with the trailer the kernel looks for, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, "TRAILER!!!", 0)?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        inode: u32,
        mode: u32,
        links: u32,
        name: &str,
        size: usize,
    ) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} exceeds 4 GiB"))
        })?;
        // With its NUL terminator; names in this archive are short paths.
        let name_size = name.len() + 1;
        // magic, inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 110 bytes in all.
        write!(
            self.out,
            "070701{inode:08x}{mode:08x}{:08x}{:08x}{links:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        )?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // Header and name together are padded to a multiple of four bytes.
        self.pad(110 + name_size)
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One member read back: (mode, nlink, name, data), by the rules the kernel's unpacker uses.
    fn read_members(archive: &[u8]) -> Vec<(u32, u32, String, Vec<u8>)> {
        let field = |at: usize, index: usize| {
            let start = at + 6 + index * 8;
            u32::from_str_radix(std::str::from_utf8(&archive[start..start + 8]).unwrap(), 16)
                .unwrap()
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        let mut members = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let (mode, links, size, name_size) =
                (field(at, 1), field(at, 4), field(at, 6), field(at, 11));
            let name_start = at + 110;
            let name = &archive[name_start..name_start + name_size as usize];
            assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
            let name = String::from_utf8(name[..name.len() - 1].to_vec()).unwrap();
            let data_start = align(name_start + name_size as usize);
            let data = archive[data_start..data_start + size as usize].to_vec();
            at = align(data_start + size as usize);
            if name == "TRAILER!!!" {
                assert_eq!(at, archive.len(), "nothing after the trailer");
                return members;
            }
            members.push((mode, links, name, data));
        }
    }

    #[test]
    fn members_round_trip_with_modes_and_padding() {
        let mut writer = Writer::new(Vec::new());
        writer.append("opt", Member::Directory).unwrap();
        writer
            .append(
                "opt/init",
                Member::File {
                    executable: true,
                    data: b"#!/bin/sh\n",
                },
            )
            .unwrap();
        writer
            .append(
                "opt/odd",
                Member::File {
                    executable: false,
                    data: b"x",
                },
            )
            .unwrap();
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert_eq!(
            read_members(&archive),
            vec![
                (0o040_755, 2, "opt".to_owned(), Vec::new()),
                (0o100_755, 1, "opt/init".to_owned(), b"#!/bin/sh\n".to_vec()),
                (0o100_644, 1, "opt/odd".to_owned(), b"x".to_vec()),
            ]
        );
    }

    #[test]
    fn every_member_gets_its_own_inode() {
        let mut writer = Writer::new(Vec::new());
        for name in ["a", "b"] {
            writer.append(name, Member::Directory).unwrap();
        }
        let archive = writer.finish().unwrap();
        // The inode is the first field after the magic; members are 112 bytes apart here.
        assert_eq!(&archive[6..14], b"00000001");
        assert_eq!(&archive[112 + 6..112 + 14], b"00000002");
    }

    #[test]
    fn an_empty_archive_is_just_the_trailer() {
        let archive = Writer::new(Vec::new()).finish().unwrap();
        assert!(read_members(&archive).is_empty());
    }
}
