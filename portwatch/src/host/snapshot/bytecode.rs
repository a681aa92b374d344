//! inet_diag bytecode (`INET_DIAG_REQ_BYTECODE`) keeping only sockets whose local port lies in a
//! port set, so the kernel drops every other socket before it reaches userspace: on a host with
//! 100k TIME_WAIT sockets, only those on the watched ports cross the netlink socket.
//!
//! The format is the kernel's (`inet_diag_bc_run` and `inet_diag_bc_audit` in
//! net/ipv4/inet_diag.c). A program is a list of 4-byte ops `{code: u8, yes: u8, no: u16}`; `yes`
//! and `no` are forward byte offsets taken when the op's condition holds or not. A port
//! comparison is followed by a second op whose `no` holds the port. A socket passes when the walk
//! ends exactly at the end of the program and is dropped when it jumps 4 bytes past it. The
//! audit also wants every `no` target to lie on the chain of `yes` jumps from the start, which
//! the `or` construction below keeps (the same one `ss` uses).

use std::ops::RangeInclusive;

const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const OP_LEN: usize = 4;
const PORT_CONDITION_LEN: usize = 2 * OP_LEN;

/// Each range costs 20 bytes of program and a few comparisons per socket; past this many, the
/// closest ranges are merged (the caller filters exactly in userspace), which keeps the program
/// far below what the `no` offsets (u16) and the attribute length can address.
pub const MAX_RANGES: usize = 256;

/// A program accepting exactly the sockets whose local port lies in `ranges` (sorted, disjoint),
/// or in a covering superset when there are more than [`MAX_RANGES`].
pub fn local_port_in(ranges: &[RangeInclusive<u16>]) -> Vec<u8> {
    let ranges = covering(ranges, MAX_RANGES);
    let mut programs = ranges.iter().rev().map(|range| {
        and(
            condition(BC_S_GE, *range.start()),
            condition(BC_S_LE, *range.end()),
        )
    });
    let last = programs.next().unwrap_or_else(reject_all);
    programs.fold(last, |rest, range| or(range, rest))
}

/// `ranges` merged across their smallest gaps until at most `limit` remain.
fn covering(ranges: &[RangeInclusive<u16>], limit: usize) -> Vec<RangeInclusive<u16>> {
    let mut ranges = ranges.to_vec();
    while ranges.len() > limit.max(1) {
        let narrowest = (1..ranges.len())
            .min_by_key(|&index| *ranges[index].start() - *ranges[index - 1].end())
            .expect("at least two ranges");
        let merged = *ranges[narrowest - 1].start()..=*ranges[narrowest].end();
        ranges[narrowest - 1] = merged;
        ranges.remove(narrowest);
    }
    ranges
}

fn op(code: u8, yes: usize, no: usize) -> [u8; OP_LEN] {
    let yes = u8::try_from(yes).expect("yes offsets stay within one condition");
    let no = u16::try_from(no).expect("MAX_RANGES keeps programs within u16 offsets");
    let [no_low, no_high] = no.to_ne_bytes();
    [code, yes, no_low, no_high]
}

/// `sport <op> port`: on a match go on to the next op, otherwise jump past the end.
fn condition(code: u8, port: u16) -> Vec<u8> {
    let mut program = op(code, PORT_CONDITION_LEN, PORT_CONDITION_LEN + OP_LEN).to_vec();
    program.extend(op(0, 0, port.into()));
    program
}

/// A program no socket passes: only reached with an empty port set.
fn reject_all() -> Vec<u8> {
    op(BC_JMP, OP_LEN, 2 * OP_LEN).to_vec()
}

/// `first && second`: `first`'s rejections are moved to jump past `second` as well.
fn and(mut first: Vec<u8>, second: Vec<u8>) -> Vec<u8> {
    relocate_rejections(&mut first, second.len());
    first.extend(second);
    first
}

/// `first || second`: `first`'s rejections land on `second`, which a JMP over it skips when
/// `first` matched. The JMP's own `yes` (never taken) puts `second` on the chain of `yes` jumps.
fn or(mut first: Vec<u8>, second: Vec<u8>) -> Vec<u8> {
    first.extend(op(BC_JMP, OP_LEN, second.len() + OP_LEN));
    first.extend(second);
    first
}

/// Adds `by` to every jump of `program` that leaves it as a rejection (lands 4 bytes past its
/// end), walking the ops along their `yes` chain as the kernel's audit does.
fn relocate_rejections(program: &mut [u8], by: usize) {
    let mut at = 0;
    while at < program.len() {
        let remaining = program.len() - at;
        let yes = program[at + 1] as usize;
        let no = u16::from_ne_bytes([program[at + 2], program[at + 3]]) as usize;
        if no == remaining + OP_LEN {
            let no = u16::try_from(no + by).expect("MAX_RANGES keeps programs within u16 offsets");
            program[at + 2..at + 4].copy_from_slice(&no.to_ne_bytes());
        }
        at += yes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `inet_diag_bc_audit` for the ops this module emits: every offset aligned,
    /// in bounds, and every `no` target on the `yes` chain.
    fn audit(program: &[u8]) -> Result<(), String> {
        let on_yes_chain = |target: usize| {
            let mut at = 0;
            while at < target {
                at += program[at + 1] as usize;
            }
            at == target
        };
        let mut at = 0;
        while at < program.len() {
            let len = program.len() - at;
            let (code, yes) = (program[at], program[at + 1] as usize);
            let no = u16::from_ne_bytes([program[at + 2], program[at + 3]]) as usize;
            let min_len = match code {
                BC_S_GE | BC_S_LE if len >= PORT_CONDITION_LEN => PORT_CONDITION_LEN,
                BC_S_GE | BC_S_LE => return Err(format!("port op at {at} cut short")),
                BC_JMP => OP_LEN,
                other => return Err(format!("unexpected op {other} at {at}")),
            };
            if no < min_len || no > len + 4 || !no.is_multiple_of(4) {
                return Err(format!("bad no {no} at {at}"));
            }
            if no < len && !on_yes_chain(at + no) {
                return Err(format!(
                    "no target {} of op {at} is off the yes chain",
                    at + no
                ));
            }
            if yes < min_len || yes > len + 4 || !yes.is_multiple_of(4) {
                return Err(format!("bad yes {yes} at {at}"));
            }
            at += yes;
        }
        if at == program.len() {
            Ok(())
        } else {
            Err("the yes chain overruns the program".into())
        }
    }

    /// The kernel's `inet_diag_bc_run` for the ops this module emits.
    fn passes(program: &[u8], sport: u16) -> bool {
        let mut at: isize = 0;
        let end = program.len() as isize;
        while at < end {
            let index = at as usize;
            let next_port = || u16::from_ne_bytes([program[index + 6], program[index + 7]]);
            let matched = match program[index] {
                BC_JMP => false,
                BC_S_GE => sport >= next_port(),
                BC_S_LE => sport <= next_port(),
                other => panic!("unexpected op {other}"),
            };
            at += if matched {
                program[index + 1] as isize
            } else {
                u16::from_ne_bytes([program[index + 2], program[index + 3]]) as isize
            };
        }
        at == end
    }

    fn check_exact(ranges: &[RangeInclusive<u16>]) {
        let program = local_port_in(ranges);
        audit(&program).unwrap();
        for port in 0..=u16::MAX {
            let wanted = ranges.iter().any(|range| range.contains(&port));
            assert_eq!(passes(&program, port), wanted, "port {port} in {ranges:?}");
        }
    }

    #[test]
    fn one_port_passes_alone() {
        check_exact(&[60312..=60312]);
        assert_eq!(local_port_in(&[60312..=60312]).len(), 16);
    }

    #[test]
    fn several_ranges_pass_exactly() {
        check_exact(&[
            1..=1,
            80..=80,
            443..=443,
            8000..=8100,
            60312..=60312,
            65535..=65535,
        ]);
        check_exact(&[0..=65535]);
        check_exact(&[0..=0, 2..=2]);
    }

    #[test]
    fn an_empty_set_passes_nothing() {
        let program = local_port_in(&[]);
        audit(&program).unwrap();
        assert!((0..=u16::MAX).all(|port| !passes(&program, port)));
    }

    #[test]
    fn many_ranges_become_a_covering_program() {
        let ranges: Vec<RangeInclusive<u16>> = (0..1000u16)
            .map(|index| index * 60 + 1..=index * 60 + 1)
            .collect();
        let program = local_port_in(&ranges);
        audit(&program).unwrap();
        assert!(program.len() <= MAX_RANGES * 20);
        for range in &ranges {
            assert!(passes(&program, *range.start()));
        }
        assert!(!passes(&program, 0) && !passes(&program, 60000));
    }

    #[test]
    fn covering_merges_the_narrowest_gaps_first() {
        assert_eq!(
            covering(&[1..=1, 3..=3, 100..=100, 200..=200], 3),
            vec![1..=3, 100..=100, 200..=200]
        );
        assert_eq!(covering(&[1..=1, 3..=3], 1), vec![1..=3]);
    }
}
