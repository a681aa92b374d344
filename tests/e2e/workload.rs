//! Sockets driven through libc, so each scenario does exactly the syscalls it names (std's
//! UdpSocket, for one, always binds before sending).

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    /// Multipath TCP (`IPPROTO_MPTCP`): a stream socket whose TCP subflows the kernel makes.
    Mptcp,
}

pub struct Socket {
    fd: i32,
    family: IpAddr,
}

fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A sockaddr for `addr:port` in the socket's family.
fn sockaddr(addr: IpAddr, port: u16) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr type.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = port.to_be();
            sin6.sin6_addr.s6_addr = v6.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl Socket {
    pub fn new(kind: Kind, family: IpAddr) -> io::Result<Self> {
        let domain = if family.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let (ty, protocol) = match kind {
            Kind::Tcp => (libc::SOCK_STREAM, 0),
            Kind::Udp => (libc::SOCK_DGRAM, 0),
            Kind::Mptcp => (libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
        };
        // SAFETY: socket() takes plain integers.
        let fd = check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
        Ok(Self { fd, family })
    }

    /// A socket with SO_REUSEADDR, for scenarios that bind a port again right after closing it.
    /// Another scenario's thread may fork between our close and its exec, and its child then
    /// holds a copy of the closed socket for a moment; without the option that copy makes the
    /// next bind fail with EADDRINUSE (seen under qemu, where the window is long).
    pub fn rebinding(kind: Kind, family: IpAddr) -> io::Result<Self> {
        let socket = Self::new(kind, family)?;
        socket.reuse_address()?;
        Ok(socket)
    }

    pub fn reuse_address(&self) -> io::Result<()> {
        self.set_option(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
    }

    /// SO_REUSEPORT: several sockets of one user may share the port.
    pub fn reuse_port(&self) -> io::Result<()> {
        self.set_option(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
    }

    /// An integer socket option (SO_REUSEPORT, IPV6_V6ONLY ...).
    pub fn set_option(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: the option value points at a live i32 of the given size.
        check(unsafe {
            libc::setsockopt(
                self.fd,
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                size_of::<i32>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Binds to the family's wildcard address (`0.0.0.0` or `[::]`) instead of loopback.
    pub fn bind_any_address(&self, port: u16) -> io::Result<()> {
        let wildcard = match self.family {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        self.bind_address(wildcard, port)
    }

    pub fn bind(&self, port: u16) -> io::Result<()> {
        self.bind_address(self.family, port)
    }

    /// Binds to `address` (the wildcard, say), which must be of the socket's family.
    pub fn bind_address(&self, address: IpAddr, port: u16) -> io::Result<()> {
        let (addr, len) = sockaddr(address, port);
        // SAFETY: addr is a valid sockaddr of length len.
        check(unsafe { libc::bind(self.fd, &addr as *const _ as *const libc::sockaddr, len) })
            .map(drop)
    }

    pub fn connect(&self, port: u16) -> io::Result<()> {
        let (addr, len) = sockaddr(self.family, port);
        // SAFETY: addr is a valid sockaddr of length len.
        check(unsafe { libc::connect(self.fd, &addr as *const _ as *const libc::sockaddr, len) })
            .map(drop)
    }

    /// connect() to an `AF_UNSPEC` address: dissolves the socket's association (TCP and UDP).
    pub fn disconnect(&self) -> io::Result<()> {
        // SAFETY: sockaddr is plain data; all-zero is AF_UNSPEC.
        let addr: libc::sockaddr = unsafe { zeroed() };
        let len = size_of::<libc::sockaddr>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr of length len.
        check(unsafe { libc::connect(self.fd, &addr, len) }).map(drop)
    }

    pub fn listen(&self) -> io::Result<()> {
        // SAFETY: plain integers.
        check(unsafe { libc::listen(self.fd, 16) }).map(drop)
    }

    pub fn accept(&self) -> io::Result<Socket> {
        // SAFETY: null address pointers are allowed: the peer address is not wanted.
        let fd = check(unsafe {
            libc::accept4(
                self.fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        Ok(Socket {
            fd,
            family: self.family,
        })
    }

    pub fn send_to(&self, port: u16) -> io::Result<()> {
        self.send_to_with(port, 0)
    }

    /// sendto() with `flags` (`MSG_FASTOPEN`: a TCP connect that carries data in its SYN).
    pub fn send_to_with(&self, port: u16, flags: i32) -> io::Result<()> {
        let (addr, len) = sockaddr(self.family, port);
        let payload = b"portwatch";
        // SAFETY: the payload and address are valid for the lengths given.
        check(unsafe {
            libc::sendto(
                self.fd,
                payload.as_ptr() as *const libc::c_void,
                payload.len(),
                flags,
                &addr as *const _ as *const libc::sockaddr,
                len,
            ) as i32
        })
        .map(drop)
    }

    /// write() on the socket: on an unconnected UDP socket the kernel autobinds a port, then
    /// fails with EDESTADDRREQ.
    pub fn write(&self) -> io::Result<()> {
        let payload = b"portwatch";
        // SAFETY: the payload is valid for its length.
        check(unsafe { libc::write(self.fd, payload.as_ptr().cast(), payload.len()) as i32 })
            .map(drop)
    }

    /// Waits (up to 10 s) until the peer's FIN has arrived: a read returns end of file. A close
    /// after that is a passive one, which frees the port at once; closing before the FIN
    /// arrives can leave this end in TIME_WAIT instead (seen under qemu, where softirqs lag).
    pub fn await_peer_close(&self) -> io::Result<()> {
        let mut poll = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd for the duration of the call.
        let ready = check(unsafe { libc::poll(&mut poll, 1, 10_000) })?;
        if ready == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer's FIN did not arrive within 10 s",
            ));
        }
        let mut byte = 0u8;
        // SAFETY: the buffer is one writable byte.
        match check(unsafe { libc::recv(self.fd, (&mut byte as *mut u8).cast(), 1, 0) as i32 })? {
            0 => Ok(()),
            _ => Err(io::Error::other(
                "data arrived where the peer's FIN was awaited",
            )),
        }
    }

    pub fn local_port(&self) -> io::Result<u16> {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) address.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: storage is writable and len holds its size.
        check(unsafe {
            libc::getsockname(
                self.fd,
                &mut storage as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        })?;
        // SAFETY: getsockname filled an address of the socket's own family.
        let port = unsafe {
            if self.family.is_ipv4() {
                (*(&storage as *const _ as *const libc::sockaddr_in)).sin_port
            } else {
                (*(&storage as *const _ as *const libc::sockaddr_in6)).sin6_port
            }
        };
        Ok(u16::from_be(port))
    }

    pub fn close(self) {}
}

impl std::os::fd::AsFd for Socket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: fd stays open for as long as this value, which the borrow cannot outlive.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: fd is a socket this value owns and closes once.
        unsafe { libc::close(self.fd) };
    }
}

/// A TCP socket listening on the family's loopback at `port` (0: the kernel picks).
pub fn tcp_listener(family: IpAddr, port: u16) -> io::Result<Socket> {
    let listener = Socket::new(Kind::Tcp, family)?;
    listener.bind(port)?;
    listener.listen()?;
    Ok(listener)
}

/// A loopback connection to `listener`: the client, the server's accepted end, and the port the
/// client was given.
pub fn tcp_connection(listener: &Socket) -> io::Result<(Socket, Socket, u16)> {
    let client = Socket::new(Kind::Tcp, listener.family)?;
    client.connect(listener.local_port()?)?;
    let client_port = client.local_port()?;
    let accepted = listener.accept()?;
    Ok((client, accepted, client_port))
}

/// A port free for TCP and UDP on both loopbacks right now, outside the ephemeral range so the
/// kernel is unlikely to hand it to another process meanwhile.
pub fn free_port() -> u16 {
    // Never the same port twice in one run: scenarios run in parallel.
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    for attempt in 0..1000u64 {
        let port = 20000
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(attempt * 7919))
                % 10000) as u16;
        let free = [Kind::Tcp, Kind::Udp].into_iter().all(|kind| {
            [V4, V6].into_iter().all(|family| {
                Socket::new(kind, family)
                    .and_then(|socket| socket.bind(port))
                    .is_ok()
            })
        });
        if free && !handed_out.contains(&port) {
            handed_out.push(port);
            // Another scenario's thread may have forked while the probes were open: its child
            // holds copies of them until it execs, and a bind of the port fails meanwhile (seen:
            // EADDRINUSE on a port just handed out, on this host and under qemu). Give such a
            // child the moment it needs to exec before the port is used.
            std::thread::sleep(std::time::Duration::from_millis(50));
            return port;
        }
    }
    panic!("no free port in 20000-29999");
}
