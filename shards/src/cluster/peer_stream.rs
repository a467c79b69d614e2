//! A peer link's byte stream (ADR 0027): the TCP stream as it is, or a TLS session over it
//! driven in memory (as the client listeners do, `tls.rs`).
//!
//! After the handshake a link goes one way: the dialing node only sends, the answering node
//! only reads. So one task at a time uses a stream, and the session's `RefCell` is never
//! borrowed across an await. The reader sends whatever records its session owes the other
//! side (an alert, a key update) as it reads.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::runtime::TcpStream;
use crate::tls_records::Received;

/// A link's stream.
pub struct PeerStream {
    tcp: TcpStream,
    tls: Option<Tls>,
}

struct Tls {
    session: RefCell<rustls::Connection>,
    /// Records received and not yet given to the session; the buffer is kept for the life
    /// of the link.
    received: RefCell<Received>,
    /// Where records to send are made; kept likewise.
    sealed: RefCell<Vec<u8>>,
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl PeerStream {
    /// The stream without TLS.
    pub fn plain(tcp: TcpStream) -> PeerStream {
        PeerStream { tcp, tls: None }
    }

    /// Dials TLS on `tcp`: runs the handshake as the client, checking the other node's
    /// certificate against `name`.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<PeerStream> {
        let session = rustls::ClientConnection::new(config, name).map_err(invalid)?;
        PeerStream::handshake(tcp, session.into()).await
    }

    /// Answers TLS on `tcp`: runs the handshake as the server.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<PeerStream> {
        let session = rustls::ServerConnection::new(config).map_err(invalid)?;
        PeerStream::handshake(tcp, session.into()).await
    }

    async fn handshake(tcp: TcpStream, mut session: rustls::Connection) -> io::Result<PeerStream> {
        // The link's sender sends its own bounded frames: the session need not hold them back.
        session.set_buffer_limit(None);
        let stream = PeerStream {
            tcp,
            tls: Some(Tls {
                session: RefCell::new(session),
                received: RefCell::new(Received::default()),
                sealed: RefCell::new(Vec::new()),
            }),
        };
        let tls = stream.tls.as_ref().expect("just made");
        loop {
            stream.flush_records().await?;
            if !tls.session.borrow().is_handshaking() {
                return Ok(stream);
            }
            if !stream.advance().await? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other node closed the link during the TLS handshake",
                ));
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the link runs through TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends every record the session has ready.
    async fn flush_records(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let mut out = std::mem::take(&mut *tls.sealed.borrow_mut());
        out.clear();
        {
            let mut session = tls.session.borrow_mut();
            while session.wants_write() {
                session.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            *tls.sealed.borrow_mut() = out;
            return Ok(());
        }
        let (sent, mut out) = self.tcp.send_all(out).await;
        out.clear();
        *tls.sealed.borrow_mut() = out;
        sent
    }

    /// Gives the session the next records, receiving them first if none are left; false
    /// when the other side closed. A record that does not verify ends the link (its alert
    /// is sent). Call only when the session's plaintext has been read.
    async fn advance(&self) -> io::Result<bool> {
        let tls = self.tls.as_ref().expect("a TLS link");
        if tls.received.borrow().is_drained() {
            let buffer = tls.received.borrow_mut().take_buffer();
            let (result, buffer) = self.tcp.recv(buffer, 0).await;
            let n = *result.as_ref().unwrap_or(&0);
            tls.received.borrow_mut().filled(buffer, n);
            if result? == 0 {
                return Ok(false);
            }
        }
        let fed = tls
            .received
            .borrow_mut()
            .feed(&mut tls.session.borrow_mut());
        if let Err(error) = fed {
            // Tell the other side why, as far as the link still carries it.
            let _ = self.flush_records().await;
            return Err(error);
        }
        Ok(true)
    }

    /// Receives into `buffer[at..]`; returns the count (0: the other side closed) and the
    /// buffer.
    pub async fn recv(&self, mut buffer: Vec<u8>, at: usize) -> (io::Result<usize>, Vec<u8>) {
        let Some(tls) = &self.tls else {
            return self.tcp.recv(buffer, at).await;
        };
        loop {
            let read = tls.session.borrow_mut().reader().read(&mut buffer[at..]);
            match read {
                Ok(n) => return (Ok(n), buffer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buffer),
            }
            match self.advance().await {
                Ok(false) => return (Ok(0), buffer),
                Ok(true) => {}
                Err(e) => return (Err(e), buffer),
            }
            if let Err(e) = self.flush_records().await {
                return (Err(e), buffer);
            }
        }
    }

    /// Sends all of `buffer` (through TLS: as records); returns it for reuse, unchanged.
    pub async fn send_all(&self, buffer: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let Some(tls) = &self.tls else {
            return self.tcp.send_all(buffer).await;
        };
        let written = tls.session.borrow_mut().writer().write_all(&buffer);
        if let Err(e) = written {
            return (Err(e), buffer);
        }
        (self.flush_records().await, buffer)
    }
}
