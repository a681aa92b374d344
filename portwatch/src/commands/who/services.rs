//! Port names from /etc/services (`name port/proto [aliases...] # comment`), which minimal
//! systems and containers often lack.

use std::{fs, io};

const SERVICES_FILE: &str = "/etc/services";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub proto: String,
    pub aliases: Vec<String>,
}

/// This host's services table, or None when the file does not exist.
pub fn read() -> io::Result<Option<String>> {
    match fs::read_to_string(SERVICES_FILE) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("reading {SERVICES_FILE}: {err}"),
        )),
    }
}

/// The services `table` names for `port`.
pub fn on_port(table: &str, port: u16) -> Vec<Service> {
    table
        .lines()
        .filter_map(parse_line)
        .filter(|(p, _)| *p == port)
        .map(|(_, s)| s)
        .collect()
}

fn parse_line(line: &str) -> Option<(u16, Service)> {
    let content = line.split('#').next()?;
    let mut fields = content.split_whitespace();
    let name = fields.next()?;
    let (port, proto) = fields.next()?.split_once('/')?;
    Some((
        port.parse().ok()?,
        Service {
            name: name.to_string(),
            proto: proto.to_string(),
            aliases: fields.map(str::to_string).collect(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Network services, Internet style
tcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
http\t\t80/udp
kerberos\t88/tcp\t\tkerberos5 krb5 kerberos-sec\t# Kerberos v5

broken line
bad\t\tx/tcp
";

    #[test]
    fn finds_every_name_of_a_port() {
        let http = on_port(SAMPLE, 80);
        assert_eq!(http.len(), 2);
        assert_eq!(
            http[0],
            Service {
                name: "http".into(),
                proto: "tcp".into(),
                aliases: vec!["www".into()],
            }
        );
        assert_eq!(http[1].proto, "udp");
        assert_eq!(
            on_port(SAMPLE, 88)[0].aliases,
            ["kerberos5", "krb5", "kerberos-sec"]
        );
    }

    #[test]
    fn skips_comments_blank_and_malformed_lines() {
        assert!(on_port(SAMPLE, 60312).is_empty());
        assert_eq!(parse_line("# ssh 22/tcp"), None);
        assert_eq!(parse_line("bad x/tcp"), None);
        assert_eq!(parse_line(""), None);
    }
}
