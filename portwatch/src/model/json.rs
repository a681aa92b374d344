//! The JSON text every record writer shares: strings, integers and addresses written straight
//! into a byte buffer, without `core::fmt` on the common paths (they run for every event).

use std::{
    io::{self, Write},
    net::IpAddr,
};

/// Writes `text` as a JSON string literal. Process names and command lines can hold any byte.
/// Runs of bytes that need no escape are copied whole: this runs for every event's `comm`.
pub fn quote(out: &mut impl Write, text: &str) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.write_all(b"\"")?;
    let bytes = text.as_bytes();
    let mut copied = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        // Bytes of multi-byte UTF-8 characters are all 0x80 or above: never escaped.
        let control;
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                control = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ];
                &control
            }
            _ => continue,
        };
        out.write_all(&bytes[copied..index])?;
        out.write_all(escape)?;
        copied = index + 1;
    }
    out.write_all(&bytes[copied..])?;
    out.write_all(b"\"")
}

/// Writes an integer's digits: every event carries several, and `core::fmt` was the largest
/// share of the tracer's CPU per event.
pub fn number(out: &mut impl Write, value: impl itoa::Integer) -> io::Result<()> {
    out.write_all(itoa::Buffer::new().format(value).as_bytes())
}

/// Writes an address as `Display` does; IPv4, the common case, without `core::fmt`.
pub fn address(out: &mut impl Write, address: IpAddr) -> io::Result<()> {
    match address {
        IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.write_all(b".")?;
                }
                number(out, octet)?;
            }
            Ok(())
        }
        IpAddr::V6(v6) => write!(out, "{v6}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_escapes_and_keeps_utf8() {
        let mut out = Vec::new();
        quote(&mut out, "a\"b\\c\nd\te\u{1}f\u{7f}g é ✓").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\nd\\te\\u0001f\\u007fg é ✓\""
        );
    }
}
