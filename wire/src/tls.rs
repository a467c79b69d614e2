//! TLS for the client library (issue 16, docs/security.md): rustls over a blocking
//! `TcpStream`, shared by a connection's reader thread and its writers.
//!
//! The handshake runs to its end when the connection opens. After it, every write of TLS
//! records to the socket happens while the session's lock is held (a request's records, or
//! an answer the reader owes the server), so records of two threads never interleave; the
//! reader waits for bytes from the socket without the lock.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How a client connects over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM certificates of the authorities that sign the servers' certificates.
    pub ca_file: PathBuf,
    /// The name the server's certificate must carry; default: the host of the address.
    pub server_name: Option<String>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

fn error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The certificates of a PEM file.
pub fn load_certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(error(format!("{}: no certificate in it", path.display())));
    }
    Ok(certificates)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(format!("{}: {e}", path.display())))
}

/// The cryptography: ring, which builds with a C compiler alone (aws-lc-rs, rustls's other
/// provider, has post-quantum key exchange but a heavier build). Shared by kvsd.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration `options` describe.
pub fn client_config(options: &TlsOptions) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates(&options.ca_file)? {
        roots
            .add(certificate)
            .map_err(|e| error(format!("{}: {e}", options.ca_file.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &options.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_key(key)?)
            .map_err(|e| error(format!("the client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate is checked against: the option, else `addr`'s host.
pub fn server_name(options: &TlsOptions, addr: &str) -> io::Result<ServerName<'static>> {
    let host = match &options.server_name {
        Some(name) => name.clone(),
        None => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    ServerName::try_from(host.clone()).map_err(|_| error(format!("bad TLS server name {host:?}")))
}

/// A connection's way to the server: bytes as they are, or through a TLS session.
#[derive(Debug, Clone)]
pub enum Link {
    Plain,
    Tls(Arc<Mutex<rustls::ClientConnection>>),
}

fn lock(session: &Mutex<rustls::ClientConnection>) -> MutexGuard<'_, rustls::ClientConnection> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// Opens the link on a connected `stream`: for TLS, the whole handshake.
    pub fn open(stream: &mut TcpStream, addr: &str, tls: Option<&TlsOptions>) -> io::Result<Link> {
        let Some(options) = tls else {
            return Ok(Link::Plain);
        };
        let mut session =
            rustls::ClientConnection::new(client_config(options)?, server_name(options, addr)?)
                .map_err(|e| error(e.to_string()))?;
        while session.is_handshaking() {
            session.complete_io(stream)?;
        }
        Ok(Link::Tls(Arc::new(Mutex::new(session))))
    }

    /// Writes all of `bytes` (for TLS: as records, flushed to the socket).
    pub fn write_all(&self, stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain => stream.write_all(bytes),
            Link::Tls(session) => {
                let mut session = lock(session);
                // A piece at a time: the session holds at most 64 KiB of records unsent.
                for piece in bytes.chunks(16 * 1024) {
                    session.writer().write_all(piece)?;
                    while session.wants_write() {
                        session.write_tls(stream)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads some bytes (0: the server closed); blocks until there are some.
    pub fn read(&self, stream: &mut TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
        let Link::Tls(session) = self else {
            return stream.read(buffer);
        };
        let mut records = vec![0u8; 16 * 1024];
        loop {
            {
                let mut session = lock(session);
                match session.reader().read(buffer) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let n = stream.read(&mut records)?;
            if n == 0 {
                return Ok(0);
            }
            let mut session = lock(session);
            let mut at = 0;
            while at < n {
                at += session.read_tls(&mut &records[at..n])?;
                session
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            while session.wants_write() {
                session.write_tls(stream)?;
            }
        }
    }
}
