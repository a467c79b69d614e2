//! TCP on the executor's ring: accept, receive and send as io_uring operations whose buffers
//! are moved in and handed back, so a dropped future can never leave the kernel writing into
//! freed memory.

use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use io_uring::opcode;
use socket2::{Domain, Protocol, Socket, Type};

use super::executor::{fd, io_result, Op};

/// Connections waiting to be accepted, per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// A listening socket. The node binds each address once and every executor accepts on its own
/// duplicate of the descriptor: one socket, one accept queue, so the port is this process's
/// alone. (With SO_REUSEPORT, any other process of the same user could bind the port too and
/// silently take a share of the connections.)
pub struct TcpListener {
    fd: OwnedFd,
}

impl TcpListener {
    /// Binds and listens on `addr`. SO_REUSEADDR lets a restart bind while connections of
    /// the previous process linger in TIME_WAIT; it does not let two listeners share a port.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        // SAFETY: into_raw_fd hands over a descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
        Ok(TcpListener { fd })
    }

    /// Another handle on the same socket (a duplicated descriptor), for another executor.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        Ok(TcpListener {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let socket = ManuallyDrop::new(
            // SAFETY: borrowed for the call only; ManuallyDrop keeps it from closing our fd.
            unsafe { Socket::from_raw_fd(self.fd.as_raw_fd()) },
        );
        socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let raw = self.fd.as_raw_fd();
        let (result, _) = Op::submit_fd(|| {
            opcode::Accept::new(fd(raw), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        })
        .await;
        let accepted = io_result(result)?;
        // SAFETY: accept returned a new descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(accepted as i32) };
        Ok(TcpStream { fd })
    }
}

/// A connected socket.
pub struct TcpStream {
    fd: OwnedFd,
}

impl TcpStream {
    /// Connects to `addr` on the executor's ring. The socket address lives in the op's slot
    /// until the completion, so a dropped future (a timeout) leaves the kernel nothing freed.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect_from(None, addr).await
    }

    /// Like [`TcpStream::connect`], from `local` (an address of this host, any port) when
    /// given: a node's links leave from its peer address, so that rules on addresses (a
    /// firewall, a test's partition) see which node is talking.
    pub async fn connect_from(
        local: Option<std::net::IpAddr>,
        addr: SocketAddr,
    ) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_cloexec(true)?;
        if let Some(ip) = local {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        // SAFETY: into_raw_fd hands over a descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) };
        let address = Box::new(socket2::SockAddr::from(addr));
        let (pointer, length) = (address.as_ptr(), address.len());
        let entry = opcode::Connect::new(fd(owned.as_raw_fd()), pointer, length).build();
        let (result, _) = Op::submit_keeping(address, entry).finish_keeping().await;
        io_result(result)?;
        Ok(TcpStream { fd: owned })
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.set_tcp_option(libc::TCP_NODELAY, nodelay.into())
    }

    /// Makes the kernel abort the connection once data it sent has stayed unacknowledged
    /// for `limit` (TCP_USER_TIMEOUT): a send then fails instead of waiting out TCP's
    /// retransmission backoff, which grows to minutes on a link that was cut for a while.
    pub fn set_user_timeout(&self, limit: std::time::Duration) -> io::Result<()> {
        let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
        self.set_tcp_option(libc::TCP_USER_TIMEOUT, ms)
    }

    fn set_tcp_option(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt reads size_of::<c_int>() bytes from a live value.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The address of the other end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket2::SockRef::from(&self.fd)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the peer has no IP address"))
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Ends the receiving side: a receive in progress or to come returns 0 (end of stream).
    pub fn shutdown_read(&self) {
        // SAFETY: shutdown on a descriptor we own; a failure (not connected) needs nothing.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RD) };
    }

    /// Receives into `buffer[at..]`; returns the count (0: the peer closed) and the buffer.
    pub async fn recv(&self, buffer: Vec<u8>, at: usize) -> (io::Result<usize>, Vec<u8>) {
        assert!(at < buffer.len(), "room to receive into");
        let raw = self.fd.as_raw_fd();
        let (result, buffer) = Op::submit(Some(buffer), |buffer| {
            let buffer = buffer.expect("a receive has a buffer");
            let room = &mut buffer[at..];
            opcode::Recv::new(fd(raw), room.as_mut_ptr(), room.len() as u32).build()
        })
        .await;
        (io_result(result), buffer.expect("the buffer comes back"))
    }

    /// Sends `buffer[from..]`, or a first part of it; returns the count sent and the buffer.
    pub async fn send(&self, buffer: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        let raw = self.fd.as_raw_fd();
        let (result, buffer) = Op::submit(Some(buffer), |buffer| {
            let buffer = buffer.expect("a send has a buffer");
            let data = &buffer[from..];
            opcode::Send::new(fd(raw), data.as_ptr(), data.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        })
        .await;
        (io_result(result), buffer.expect("the buffer comes back"))
    }

    /// Sends all of `buffer`; returns it for reuse.
    pub async fn send_all(&self, mut buffer: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut sent = 0;
        while sent < buffer.len() {
            let (result, back) = self.send(buffer, sent).await;
            buffer = back;
            match result {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buffer),
                Ok(n) => sent += n,
                Err(error) => return (Err(error), buffer),
            }
        }
        (Ok(()), buffer)
    }
}
