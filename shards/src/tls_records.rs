//! TLS records received and not yet given to their session, shared by the client listeners'
//! sessions (`tls.rs`) and the peer links (`cluster/peer_stream.rs`).
//!
//! rustls refuses more records once the plaintext it holds is over its limit (16 KiB): a
//! receive that ends inside a full record and carries small records after it decrypts to
//! more than that. So the records of a receive are given to the session one `read_tls` at a
//! time, and whoever reads waits for the plaintext to be taken before giving the rest
//! (found by the cluster benchmark over peer TLS: "received plaintext buffer full").

use std::io;

/// Bytes of records one receive takes at most: one full record and its overhead.
pub const RECORDS_RECEIVED_MAX: usize = 16 * 1024 + 256;

/// Records received and not yet given to the session: `buffer[start..end]`.
#[derive(Default)]
pub struct Received {
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl Received {
    /// Whether every byte received went to the session.
    pub fn is_drained(&self) -> bool {
        self.start == self.end
    }

    /// The buffer to receive into (only when drained); give it back with [`Received::filled`].
    pub fn take_buffer(&mut self) -> Vec<u8> {
        assert!(self.is_drained(), "records left to give the session");
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.resize(RECORDS_RECEIVED_MAX, 0);
        buffer
    }

    /// Puts back the buffer `take_buffer` gave, with `n` bytes received into it.
    pub fn filled(&mut self, buffer: Vec<u8>, n: usize) {
        assert!(n <= buffer.len());
        self.buffer = buffer;
        self.start = 0;
        self.end = n;
    }

    /// Frees the buffer while nothing is left in it (for connections that sit idle).
    pub fn release_if_drained(&mut self) {
        if self.is_drained() {
            self.buffer = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// The first received byte not yet given to the session.
    pub fn first(&self) -> Option<u8> {
        self.buffer[self.start..self.end].first().copied()
    }

    /// Gives the session what one `read_tls` takes, and processes it. Call only when the
    /// session's plaintext has been read; a record that does not verify is an error
    /// (InvalidData; the session then has its alert to send).
    pub fn feed(&mut self, session: &mut rustls::Connection) -> io::Result<()> {
        assert!(!self.is_drained(), "nothing to give the session");
        let read = session.read_tls(&mut &self.buffer[self.start..self.end])?;
        if read == 0 {
            return Err(io::Error::other("the TLS session took no bytes"));
        }
        self.start += read;
        assert!(self.start <= self.end);
        session
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::*;

    /// A client and a server session, handshaken in memory.
    fn pair() -> (rustls::Connection, rustls::Connection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let provider = kvs_wire::tls::provider;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client: rustls::Connection =
            rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                .unwrap()
                .into();
        let mut server: rustls::Connection = rustls::ServerConnection::new(Arc::new(server))
            .unwrap()
            .into();
        while client.is_handshaking() || server.is_handshaking() {
            pump(&mut client, &mut server);
            pump(&mut server, &mut client);
        }
        (client, server)
    }

    /// Hands every record `from` has to send to `to`.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut at = 0;
        while at < bytes.len() {
            at += to.read_tls(&mut &bytes[at..]).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// The records of runs of 16 KiB each followed by 40 runs of 90 bytes, every run its
    /// own record (the stream that broke peer links), and the plaintext.
    fn records(client: &mut rustls::Connection) -> (Vec<u8>, Vec<u8>) {
        let (mut records, mut plaintext) = (Vec::new(), Vec::new());
        let mut write = |bytes: &[u8]| {
            client.writer().write_all(bytes).unwrap();
            while client.wants_write() {
                client.write_tls(&mut records).unwrap();
            }
            plaintext.extend_from_slice(bytes);
        };
        for round in 0..8u8 {
            write(&vec![round; 16 * 1024]);
            for small in 0..40u8 {
                write(&[small; 90]);
            }
        }
        (records, plaintext)
    }

    #[test]
    fn a_receive_holding_more_than_the_plaintext_limit_is_given_a_record_at_a_time() {
        // Giving the session a whole receive at once fails as rustls says it does.
        let (mut client, mut naive) = pair();
        let (stream, _) = records(&mut client);
        let mut failed = false;
        'receives: for chunk in stream.chunks(RECORDS_RECEIVED_MAX) {
            let mut at = 0;
            while at < chunk.len() {
                match naive.read_tls(&mut &chunk[at..]) {
                    Ok(n) => at += n,
                    Err(_) => {
                        failed = true;
                        break 'receives;
                    }
                }
                naive.process_new_packets().unwrap();
            }
            let mut sink = Vec::new();
            let _ = naive.reader().read_to_end(&mut sink);
        }
        assert!(failed, "the naive way did not hit rustls's plaintext limit");

        // Through `Received`, with the plaintext read between feeds, every byte arrives.
        let (mut client, mut server) = pair();
        let (stream, plaintext) = records(&mut client);
        let mut received = Received::default();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        for piece in stream.chunks(RECORDS_RECEIVED_MAX) {
            let mut buffer = received.take_buffer();
            buffer[..piece.len()].copy_from_slice(piece);
            received.filled(buffer, piece.len());
            while !received.is_drained() {
                received.feed(&mut server).unwrap();
                loop {
                    match server.reader().read(&mut chunk) {
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            received.release_if_drained();
        }
        assert_eq!(got.len(), plaintext.len());
        assert!(got == plaintext);
    }
}
