//! Port sets: single ports, ranges `A-B`, comma lists, IANA's dynamic range and this host's
//! ephemeral range.

use std::ops::RangeInclusive;

use portwatch_ebpf::PORT_BITMAP_WORDS;

/// IANA's dynamic/private range (RFC 6335).
pub const DYNAMIC: RangeInclusive<u16> = 49152..=65535;

const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS_FILE: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// A set of ports, as the kernel-side bitmap wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<RangeInclusive<u16>>,
}

impl PortSet {
    pub fn new(mut ranges: Vec<RangeInclusive<u16>>) -> Self {
        ranges.sort_by_key(|range| *range.start());
        let mut merged: Vec<RangeInclusive<u16>> = Vec::new();
        for range in ranges {
            match merged.last_mut() {
                Some(last) if *range.start() as u32 <= *last.end() as u32 + 1 => {
                    *last = *last.start()..=(*last.end()).max(*range.end());
                }
                _ => merged.push(range),
            }
        }
        Self { ranges: merged }
    }

    /// Sorted, disjoint and not adjacent.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|range| range.contains(&port))
    }

    pub fn intersects(&self, other: &RangeInclusive<u16>) -> bool {
        self.ranges
            .iter()
            .any(|range| range.start() <= other.end() && other.start() <= range.end())
    }

    /// One bit per port, 64 ports per word, as `WATCHED_PORTS` holds them.
    pub fn bitmap(&self) -> Vec<u64> {
        let mut words = vec![0u64; PORT_BITMAP_WORDS as usize];
        for range in &self.ranges {
            for port in range.clone() {
                words[port as usize >> 6] |= 1 << (port & 63);
            }
        }
        words
    }

    /// `80,443,8000-8100`: the set as a user would write it.
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(|range| match (range.start(), range.end()) {
                (start, end) if start == end => start.to_string(),
                (start, end) => format!("{start}-{end}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses one `--port` value: `60312`, `1000-2000` or `80,443,8000-8100`. Used as clap's value
/// parser, so the message is what the user sees.
pub fn parse_spec(spec: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    spec.split(',')
        .map(|item| parse_item(item.trim()))
        .collect()
}

fn parse_item(item: &str) -> Result<RangeInclusive<u16>, String> {
    match item.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (parse_port(start)?, parse_port(end)?);
            if start > end {
                return Err(format!(
                    "range {start}-{end} is reversed; write {end}-{start}"
                ));
            }
            Ok(start..=end)
        }
        None => parse_port(item).map(|port| port..=port),
    }
}

/// One port, 1-65535, with the reason when it is not.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("port 0 is not a port (the kernel picks one for bind(0)); use 1-65535".into()),
        Ok(port) if port <= 65535 => Ok(port as u16),
        Ok(port) => Err(format!("port {port} is out of range 1-65535")),
        Err(_) => Err(format!(
            "{text:?} is not a port number (expected 1-65535, A-B or a list)"
        )),
    }
}

/// This host's ephemeral range, which the kernel picks from for bind(0), connect and autobind.
pub fn ephemeral() -> std::io::Result<RangeInclusive<u16>> {
    parse_ephemeral(&std::fs::read_to_string(EPHEMERAL_RANGE_FILE)?).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{EPHEMERAL_RANGE_FILE} does not hold two ports"),
        )
    })
}

pub fn parse_ephemeral(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text
        .split_whitespace()
        .map(|field| field.parse::<u16>().ok());
    let (low, high) = (fields.next()??, fields.next()??);
    Some(low.min(high)..=low.max(high))
}

/// IANA's three port ranges (RFC 6335).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IanaClass {
    WellKnown,
    Registered,
    Dynamic,
}

impl IanaClass {
    pub fn of(port: u16) -> Self {
        match port {
            0..=1023 => IanaClass::WellKnown,
            1024..=49151 => IanaClass::Registered,
            _ => IanaClass::Dynamic,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IanaClass::WellKnown => "well-known",
            IanaClass::Registered => "registered",
            IanaClass::Dynamic => "dynamic",
        }
    }

    pub fn range(self) -> RangeInclusive<u16> {
        match self {
            IanaClass::WellKnown => 0..=1023,
            IanaClass::Registered => 1024..=49151,
            IanaClass::Dynamic => DYNAMIC,
        }
    }
}

/// Where the kernel picks ports for bind(0), connect and autobind on this host: the ephemeral
/// range minus the reserved ports. A server on a port the kernel may pick can find it taken by
/// an outgoing connection: an intermittent `EADDRINUSE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EphemeralPolicy {
    pub range: RangeInclusive<u16>,
    /// `net.ipv4.ip_local_reserved_ports` (it covers IPv6 too), as written there.
    pub reserved: Vec<RangeInclusive<u16>>,
}

impl EphemeralPolicy {
    pub fn read() -> std::io::Result<Self> {
        let reserved_text = std::fs::read_to_string(RESERVED_PORTS_FILE)?;
        let reserved = parse_reserved(&reserved_text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{RESERVED_PORTS_FILE} is not a list of ports and ranges"),
            )
        })?;
        Ok(Self {
            range: ephemeral()?,
            reserved,
        })
    }

    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|range| range.contains(&port))
    }

    /// Whether the kernel may hand `port` to a bind(0), connect or autobind.
    pub fn kernel_may_pick(&self, port: u16) -> bool {
        self.range.contains(&port) && !self.is_reserved(port)
    }

    /// What to tell a user about a server port the kernel may hand out: the classic cause of
    /// an intermittent `EADDRINUSE`, and the command that prevents it. None for other ports.
    pub fn reserve_hint(&self, port: u16) -> Option<String> {
        self.kernel_may_pick(port).then(|| {
            format!(
                "the kernel may give port {port} to any outgoing connection or bind(0) on this \
                 host, so a server starting on it can fail with EADDRINUSE now and then; reserve \
                 it with `{}` (and in /etc/sysctl.d/ to keep it across reboots)",
                self.reserve_command(port)
            )
        })
    }

    /// The sysctl command reserving `port` while keeping the ports reserved already (writing
    /// the sysctl replaces the whole list).
    pub fn reserve_command(&self, port: u16) -> String {
        let mut ranges = self.reserved.clone();
        ranges.push(port..=port);
        format!(
            "sysctl -w net.ipv4.ip_local_reserved_ports={}",
            PortSet::new(ranges).describe()
        )
    }
}

/// `8080,9000-9010` as the kernel prints `ip_local_reserved_ports`; empty when none.
fn parse_reserved(text: &str) -> Option<Vec<RangeInclusive<u16>>> {
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let (start, end) = item.split_once('-').unwrap_or((item, item));
            let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
            (start <= end).then_some(start..=end)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_ranges_and_lists() {
        assert_eq!(parse_spec("60312").unwrap(), vec![60312..=60312]);
        assert_eq!(parse_spec("1000-2000").unwrap(), vec![1000..=2000]);
        assert_eq!(
            parse_spec("80, 443,8000-8100").unwrap(),
            vec![80..=80, 443..=443, 8000..=8100]
        );
        assert_eq!(parse_spec("65535").unwrap(), vec![65535..=65535]);
    }

    #[test]
    fn rejects_bad_ports_with_a_reason() {
        assert!(parse_spec("0").unwrap_err().contains("port 0"));
        assert!(parse_spec("65536").unwrap_err().contains("out of range"));
        assert!(parse_spec("abc").unwrap_err().contains("not a port number"));
        assert!(parse_spec("2000-1000").unwrap_err().contains("reversed"));
        assert!(parse_spec("80,").is_err());
        assert!(parse_spec("-5").is_err());
    }

    #[test]
    fn merges_and_describes() {
        let set = PortSet::new(vec![8000..=8100, 80..=80, 8050..=8200, 81..=81]);
        assert_eq!(set.describe(), "80-81,8000-8200");
        assert!(set.contains(8150) && !set.contains(79) && !set.contains(8201));
        assert!(set.intersects(&(8200..=9000)) && !set.intersects(&(82..=7999)));
    }

    #[test]
    fn bitmap_sets_exactly_the_watched_bits() {
        let words = PortSet::new(vec![0..=0, 63..=64, 65535..=65535]).bitmap();
        assert_eq!(words.len(), 1024);
        assert_eq!(words[0], 1 | 1 << 63);
        assert_eq!(words[1], 1);
        assert_eq!(words[1023], 1 << 63);
        assert_eq!(words.iter().map(|word| word.count_ones()).sum::<u32>(), 4);
    }

    #[test]
    fn classes_follow_iana() {
        assert_eq!(IanaClass::of(0), IanaClass::WellKnown);
        assert_eq!(IanaClass::of(1023), IanaClass::WellKnown);
        assert_eq!(IanaClass::of(1024), IanaClass::Registered);
        assert_eq!(IanaClass::of(49151), IanaClass::Registered);
        assert_eq!(IanaClass::of(49152), IanaClass::Dynamic);
        assert_eq!(IanaClass::of(60312).name(), "dynamic");
        assert_eq!(IanaClass::of(65535).range(), 49152..=65535);
    }

    #[test]
    fn reads_the_reserved_ports_format() {
        assert_eq!(parse_reserved("\n"), Some(vec![]));
        assert_eq!(
            parse_reserved("8080,9000-9010\n"),
            Some(vec![8080..=8080, 9000..=9010])
        );
        assert_eq!(parse_reserved("60312"), Some(vec![60312..=60312]));
        assert_eq!(parse_reserved("9010-9000"), None);
        assert_eq!(parse_reserved("80,x"), None);
        assert_eq!(parse_reserved("70000"), None);
    }

    #[test]
    fn the_kernel_may_pick_only_unreserved_ephemeral_ports() {
        let policy = EphemeralPolicy {
            range: 32768..=60999,
            reserved: vec![8080..=8080, 40000..=40010],
        };
        assert!(policy.kernel_may_pick(60312 - 1000));
        assert!(!policy.kernel_may_pick(60312 + 1000));
        assert!(!policy.kernel_may_pick(40005));
        assert!(policy.is_reserved(8080) && !policy.kernel_may_pick(8080));
        assert!(policy.reserve_hint(40005).is_none());
        assert!(policy.reserve_hint(59312).unwrap().contains("EADDRINUSE"));
        assert_eq!(
            policy.reserve_command(60312),
            "sysctl -w net.ipv4.ip_local_reserved_ports=8080,40000-40010,60312"
        );
        assert!(EphemeralPolicy::read().is_ok());
    }

    #[test]
    fn reads_the_ephemeral_range_file_format() {
        assert_eq!(parse_ephemeral("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_ephemeral("garbage"), None);
        assert!(ephemeral().is_ok());
    }
}
