//! The hash chain of `--seal`: each record's `seal` is BLAKE3 over the previous record's seal and
//! the record's own bytes (the line without its `seal` key). Changing, removing or reordering a
//! record breaks every seal after it, unless the whole rest of the chain is recomputed, which is
//! why the last seal is also printed on stderr at exit, where logs keep it apart from the file.

/// Named in every capture header that is sealed.
pub const ALGORITHM: &str = "blake3-chain";

/// The seal before the first record of a capture.
pub const GENESIS: [u8; 32] = [0; 32];

/// The running end of a chain.
#[derive(Clone, Debug)]
pub struct Chain {
    last: [u8; 32],
}

impl Chain {
    pub fn starting_after(last: [u8; 32]) -> Self {
        Self { last }
    }

    pub fn last(&self) -> [u8; 32] {
        self.last
    }

    /// Seals one record (`{...}` without a seal key) and returns the seal as hex.
    pub fn seal(&mut self, record: &[u8]) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.last);
        hasher.update(record);
        self.last = *hasher.finalize().as_bytes();
        to_hex(&self.last)
    }
}

/// A sealed line split into the record it seals and the seal it carries.
pub fn split(line: &str) -> Option<(String, &str)> {
    const KEY: &str = ",\"seal\":\"";
    let body = line.strip_suffix("\"}")?;
    let at = body.rfind(KEY)?;
    let seal = &body[at + KEY.len()..];
    (seal.len() == 64 && seal.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (format!("{}}}", &body[..at]), seal))
}

pub fn to_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    hex
}

pub fn from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_splits_back_into_its_record() {
        let mut chain = Chain::starting_after(GENESIS);
        let record = "{\"seq\":1,\"event\":\"claim\"}";
        let seal = chain.seal(record.as_bytes());
        let line = format!("{},\"seal\":\"{seal}\"}}", &record[..record.len() - 1]);
        let (unsealed, carried) = split(&line).unwrap();
        assert_eq!((unsealed.as_str(), carried), (record, seal.as_str()));
        assert_eq!(from_hex(&seal), Some(chain.last()));
        assert_eq!(to_hex(&[0xab; 32]), "ab".repeat(32));
    }

    #[test]
    fn each_seal_depends_on_the_one_before() {
        let mut first = Chain::starting_after(GENESIS);
        let mut second = Chain::starting_after([1; 32]);
        assert_ne!(first.seal(b"{}"), second.seal(b"{}"));
    }

    #[test]
    fn unsealed_or_malformed_lines_do_not_split() {
        assert!(split("{\"seq\":1}").is_none());
        assert!(split("{\"seq\":1,\"seal\":\"abc\"}").is_none());
    }
}
