//! The sockets of one port, by the address pair that tells them apart.
//!
//! Most ports hold one socket (a client's ephemeral port) and a hash table costs about 300 bytes
//! before it holds anything, while a listener's port can hold thousands of accepted and
//! TIME_WAIT sockets, which must each be found in one lookup. So a port starts as a short list,
//! searched in order, and becomes a hash table when it outgrows that.

use std::net::IpAddr;

use foldhash::HashMap;

/// One socket within a port: its local address and peer.
pub type SocketId = (IpAddr, Option<(IpAddr, u16)>);

/// The most sockets a port keeps as a list; the next one turns it into a table.
const LIST_LIMIT: usize = 8;

/// The sockets holding one port. Several may share an address pair (sockets bound with
/// `SO_REUSEPORT`, a socket seen at start and claimed again).
pub enum PortSockets<E> {
    List(List<E>),
    Table(Table<E>),
}

/// A few sockets, each with its address pair, searched in order.
type List<E> = Vec<(SocketId, E)>;

/// Many sockets, by address pair.
type Table<E> = HashMap<SocketId, Vec<E>>;

impl<E> Default for PortSockets<E> {
    fn default() -> Self {
        // Room for one: most ports never hold a second socket.
        Self::List(Vec::with_capacity(1))
    }
}

impl<E> PortSockets<E> {
    pub fn push(&mut self, id: SocketId, entry: E) {
        match self {
            Self::List(list) if list.len() < LIST_LIMIT => list.push((id, entry)),
            Self::List(list) => {
                let mut table: Table<E> = HashMap::default();
                for (id, entry) in list.drain(..).chain(std::iter::once((id, entry))) {
                    table.entry(id).or_default().push(entry);
                }
                *self = Self::Table(table);
            }
            Self::Table(table) => table
                .entry(id)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(entry),
        }
    }

    /// The sockets under one address pair.
    pub fn under<'a>(&'a self, id: &'a SocketId) -> impl Iterator<Item = &'a E> + 'a {
        let (list, table) = self.parts();
        let listed = list
            .into_iter()
            .flatten()
            .filter(move |(at, _)| at == id)
            .map(|(_, entry)| entry);
        listed.chain(table.and_then(|table| table.get(id)).into_iter().flatten())
    }

    /// Takes out the first socket under `id` that `wanted` accepts.
    pub fn take(&mut self, id: &SocketId, wanted: impl Fn(&E) -> bool) -> Option<E> {
        match self {
            Self::List(list) => {
                let at = list
                    .iter()
                    .position(|(at, entry)| at == id && wanted(entry))?;
                Some(list.swap_remove(at).1)
            }
            Self::Table(table) => {
                let entries = table.get_mut(id)?;
                let at = entries.iter().position(wanted)?;
                let entry = entries.swap_remove(at);
                if entries.is_empty() {
                    table.remove(id);
                }
                Some(entry)
            }
        }
    }

    /// Takes out every socket under `id` that `wanted` accepts.
    pub fn take_all(&mut self, id: &SocketId, wanted: impl Fn(&E) -> bool) -> Vec<E> {
        let mut taken = Vec::new();
        while let Some(entry) = self.take(id, &wanted) {
            taken.push(entry);
        }
        taken
    }

    /// Every socket of the port.
    pub fn iter(&self) -> impl Iterator<Item = &E> {
        let (list, table) = self.parts();
        let listed = list.into_iter().flatten().map(|(_, entry)| entry);
        listed.chain(table.into_iter().flat_map(|table| table.values().flatten()))
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Self::List(list) => list.is_empty(),
            Self::Table(table) => table.is_empty(),
        }
    }

    /// A short list's room, to decide whether an emptied one is worth keeping; None for a table,
    /// which goes back to the allocator.
    pub fn list_capacity(&self) -> Option<usize> {
        match self {
            Self::List(list) => Some(list.capacity()),
            Self::Table(_) => None,
        }
    }

    fn parts(&self) -> (Option<&List<E>>, Option<&Table<E>>) {
        match self {
            Self::List(list) => (Some(list), None),
            Self::Table(table) => (None, Some(table)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn id(port: u16) -> SocketId {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), port)),
        )
    }

    #[test]
    fn a_list_and_a_table_answer_alike() {
        for sockets in [3u16, 40] {
            let mut port = PortSockets::default();
            for remote in 0..sockets {
                port.push(id(remote), u32::from(remote));
            }
            // Two sockets share one address pair.
            port.push(id(1), 100);
            assert_eq!(
                matches!(port, PortSockets::Table(_)),
                sockets as usize >= LIST_LIMIT,
                "{sockets} sockets"
            );
            assert_eq!(port.iter().count(), sockets as usize + 1);
            let mut shared: Vec<u32> = port.under(&id(1)).copied().collect();
            shared.sort_unstable();
            assert_eq!(shared, [1, 100]);
            assert_eq!(port.take(&id(1), |entry| *entry == 100), Some(100));
            assert_eq!(port.take(&id(1), |entry| *entry == 100), None);
            assert_eq!(port.take_all(&id(2), |_| true), [2]);
            assert_eq!(port.under(&id(2)).count(), 0);
            for remote in 0..sockets {
                port.take(&id(remote), |_| true);
            }
            assert!(port.is_empty(), "{sockets} sockets");
        }
    }

    #[test]
    fn only_a_list_is_kept_for_reuse() {
        let mut port = PortSockets::default();
        port.push(id(1), ());
        assert_eq!(port.list_capacity(), Some(1));
        for remote in 2..=LIST_LIMIT as u16 + 1 {
            port.push(id(remote), ());
        }
        assert_eq!(port.list_capacity(), None);
    }
}
