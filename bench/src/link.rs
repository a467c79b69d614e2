//! A benchmark connection's bytes: the TCP stream as it is, or TLS (rustls) over it
//! (`--tls-ca`), readable and writable like the socket itself, blocking (the load phase) or
//! not (the event loop). The handshake runs to its end, blocking, when the connection opens.
//!
//! Non-blocking, a write hands the session all the plaintext it takes and sends what records
//! the socket takes; records left over are [`BenchStream::has_pending`] and go out on the
//! next write or flush. A read returns WouldBlock only when the session holds no plaintext
//! and the socket no bytes, so the event loop may read until WouldBlock as it does on TCP.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use kvs_wire::tls::{client_config, server_name, TlsOptions};

pub struct BenchStream {
    tcp: TcpStream,
    tls: Option<rustls::ClientConnection>,
}

impl BenchStream {
    /// Connects to `addr`, through TLS if `tls` says so.
    pub fn connect(addr: &str, tls: Option<&TlsOptions>) -> io::Result<BenchStream> {
        let mut tcp = TcpStream::connect(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
        tcp.set_nodelay(true)?;
        let tls = match tls {
            None => None,
            Some(options) => {
                let mut session = rustls::ClientConnection::new(
                    client_config(options)?,
                    server_name(options, addr)?,
                )
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                while session.is_handshaking() {
                    session
                        .complete_io(&mut tcp)
                        .map_err(|e| io::Error::new(e.kind(), format!("TLS with {addr}: {e}")))?;
                }
                Some(session)
            }
        };
        Ok(BenchStream { tcp, tls })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether TLS records wait for room in the socket.
    pub fn has_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|s| s.wants_write())
    }

    /// Sends the records the session has (WouldBlock: some are left).
    pub fn send_records(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(session) => send(session, &mut self.tcp),
            None => Ok(()),
        }
    }
}

/// Sends `session`'s records on `tcp` (WouldBlock: some are left).
fn send(session: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while session.wants_write() {
        session.write_tls(tcp)?;
    }
    Ok(())
}

/// Like [`send`], leaving records for later when the socket is full.
fn send_some(session: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    match send(session, tcp) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

impl Write for BenchStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let BenchStream { tcp, tls } = self;
        let Some(session) = tls else {
            return tcp.write(bytes);
        };
        let n = session.writer().write(bytes)?;
        send_some(session, tcp)?;
        if n == 0 && !bytes.is_empty() {
            // The session's buffer is full of records the socket has not taken.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records()?;
        self.tcp.flush()
    }
}

impl Read for BenchStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let BenchStream { tcp, tls } = self;
        let Some(session) = tls else {
            return tcp.read(buffer);
        };
        loop {
            match session.reader().read(buffer) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Only with no plaintext held: rustls takes no more records beyond its limit.
            if session.read_tls(tcp)? == 0 {
                return Ok(0);
            }
            session
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // What the session owes the server (a key update's answer).
            send_some(session, tcp)?;
        }
    }
}
