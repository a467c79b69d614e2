//! TLS on the client listeners (issue 16, docs/security.md): the server's rustls
//! configuration, loaded from `--tls-cert`, `--tls-key` and `--tls-client-ca` at start and
//! again on SIGHUP, and a connection's session ([`Session`]) over our io_uring stream.
//!
//! rustls works on bytes in memory: a connection's reader receives records from the socket
//! and hands them to the session, which gives back plaintext; its writer gives the session
//! plaintext and sends the records it makes. Both run on the connection's core, so the
//! session is a `RefCell`. A reload makes new connections use the new certificate; the
//! connections already open keep their sessions.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use kvs_wire::tls::{load_certificates, load_key, provider};
use rustls::server::WebPkiClientVerifier;

use crate::runtime::TcpStream;
use crate::tls_records::Received;

/// Where the certificate, its key and (optionally) the authorities of client certificates
/// are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by these are asked for; `client_required`: and required.
    pub client_ca: Option<PathBuf>,
    pub client_required: bool,
}

/// The node's TLS settings, reloadable.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let certificates = load_certificates(&files.cert).map_err(|e| e.to_string())?;
    let key = load_key(&files.key).map_err(|e| e.to_string())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in load_certificates(ca).map_err(|e| e.to_string())? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if files.client_required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let config = load(&files)?;
        Ok(Tls {
            files,
            config: RwLock::new(config),
        })
    }

    /// Reads the files again (SIGHUP); on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = load(&self.files)?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// A new connection's session.
    pub fn accept(&self) -> Result<Session, String> {
        let config = Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()));
        let mut session = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        // The connection bounds its own output; the session need not hold it back.
        session.set_buffer_limit(None);
        Ok(Session {
            session: RefCell::new(session.into()),
            received: RefCell::new(Received::default()),
            fresh: std::cell::Cell::new(true),
        })
    }
}

/// One connection's TLS session.
pub struct Session {
    session: RefCell<rustls::Connection>,
    /// Records received and not yet given to the session (its buffer is freed whenever it
    /// is drained, so an idle connection holds none).
    received: RefCell<Received>,
    /// Nothing received yet: the first byte must open a TLS handshake record.
    fresh: std::cell::Cell<bool>,
}

/// The content type of a TLS handshake record: what a client's first byte must be.
const HANDSHAKE_RECORD: u8 = 0x16;

impl Session {
    /// Receives into `buffer[at..]` the next plaintext, reading records from `stream` as
    /// needed; Ok(0) when the client closed. `handshake_out`: called when the session has
    /// records to send (a handshake's answers), which the writer sends.
    pub async fn recv(
        &self,
        stream: &TcpStream,
        buffer: &mut [u8],
        mut handshake_out: impl FnMut(),
    ) -> io::Result<usize> {
        loop {
            match self.session.borrow_mut().reader().read(buffer) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.received.borrow().is_drained() {
                let records = self.received.borrow_mut().take_buffer();
                let (result, records) = stream.recv(records, 0).await;
                let n = *result.as_ref().unwrap_or(&0);
                self.received.borrow_mut().filled(records, n);
                if result? == 0 {
                    return Ok(0);
                }
                // A client that speaks plaintext to a TLS listener is cut off at once, where
                // the session would wait for the rest of a "record" that never comes.
                if self.fresh.replace(false)
                    && self.received.borrow().first() != Some(HANDSHAKE_RECORD)
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client does not speak TLS",
                    ));
                }
            }
            let mut received = self.received.borrow_mut();
            let fed = received.feed(&mut self.session.borrow_mut());
            received.release_if_drained();
            drop(received);
            if let Err(e) = fed {
                // The alert that says why is queued: let the writer send it.
                handshake_out();
                return Err(e);
            }
            if self.session.borrow().wants_write() {
                handshake_out();
            }
        }
    }

    /// Whether it has records to send.
    pub fn wants_write(&self) -> bool {
        self.session.borrow().wants_write()
    }

    /// Encrypts `plaintext` and returns every record the session has to send (into
    /// `records`, emptied first).
    pub fn seal(&self, plaintext: &[u8], records: &mut Vec<u8>) -> io::Result<()> {
        records.clear();
        let mut session = self.session.borrow_mut();
        if !plaintext.is_empty() {
            session.writer().write_all(plaintext)?;
        }
        while session.wants_write() {
            session.write_tls(records)?;
        }
        Ok(())
    }
}
