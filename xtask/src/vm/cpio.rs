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
