//! What authenticates the links between nodes (ADR 0027, docs/security.md): mutual TLS from
//! `--peer-tls-cert`, `--peer-tls-key` and `--peer-tls-ca`, and the cluster secret of
//! `--cluster-secret-file`, with the proofs the hello exchange carries. All are read at
//! start and again on SIGHUP; links already up keep what they were opened with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use kvs_wire::tls::{load_certificates, load_key, provider};
use rustls::server::WebPkiClientVerifier;
use sha2::Sha256;

/// The files of peer TLS: this node's certificate and key, and the authority every member's
/// certificate is signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How peer links are authenticated, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSecurityFiles {
    pub tls: Option<PeerTlsFiles>,
    pub secret_file: Option<PathBuf>,
}

impl PeerSecurityFiles {
    /// From the flags: the three TLS files together or none.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        secret_file: Option<PathBuf>,
    ) -> Result<PeerSecurityFiles, String> {
        let tls = match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Some(PeerTlsFiles { cert, key, ca }),
            (None, None, None) => None,
            _ => {
                return Err("--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together".into())
            }
        };
        Ok(PeerSecurityFiles { tls, secret_file })
    }

    /// Whether a link must prove it is of the cluster (TLS, or the secret, or both).
    pub fn authenticates(&self) -> bool {
        self.tls.is_some() || self.secret_file.is_some()
    }
}

/// The shortest cluster secret taken, in bytes.
pub const SECRET_LEN_MIN: usize = 16;
/// Bytes of a hello's or welcome's nonce.
pub const NONCE_LEN: usize = 16;

/// Both sides' TLS configurations: the answering node's and the dialing node's.
pub struct PeerTlsConfigs {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// Peer link security in use, reloadable.
pub struct PeerSecurity {
    files: PeerSecurityFiles,
    tls: RwLock<Option<Arc<PeerTlsConfigs>>>,
    secrets: RwLock<Option<Arc<Secrets>>>,
}

/// The cluster secrets of `--cluster-secret-file`, one a line: a node proves itself with the
/// first and takes a proof made with any (so a secret can be rotated: add the new one as a
/// second line everywhere, then move it first everywhere, then drop the old one, with a
/// SIGHUP after each step).
pub struct Secrets(Vec<Vec<u8>>);

/// What a proof covers: this link's two nodes and their nonces.
#[derive(Debug, Clone, Copy)]
pub struct LinkStart<'a> {
    pub dialer: u64,
    pub dialer_nonce: &'a [u8],
    pub answerer: u64,
    pub answerer_nonce: &'a [u8],
}

impl Secrets {
    /// This node's proof, as `side` of the link.
    pub fn prove(&self, side: Side, link: LinkStart<'_>) -> Vec<u8> {
        proof(&self.0[0], side, link)
    }

    /// Whether `got` proves, as `side` of the link, one of the secrets.
    pub fn accepts(&self, side: Side, link: LinkStart<'_>, got: &[u8]) -> bool {
        self.0
            .iter()
            .any(|secret| proof_matches(&proof(secret, side, link), got))
    }
}

impl std::fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself.
        f.debug_struct("PeerSecurity")
            .field("files", &self.files)
            .finish()
    }
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates(ca).map_err(|e| e.to_string())? {
        roots
            .add(certificate)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

fn load_tls(files: &PeerTlsFiles) -> Result<PeerTlsConfigs, String> {
    let certificates = load_certificates(&files.cert).map_err(|e| e.to_string())?;
    let key = load_key(&files.key).map_err(|e| e.to_string())?;
    let roots = roots(&files.ca)?;
    let both =
        |e: rustls::Error| format!("{} and {}: {e}", files.cert.display(), files.key.display());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates.clone(), key.clone_key())
        .map_err(both)?;
    // Links live long and are not resumed: tickets would only sit unread in the dialer's
    // socket (it reads nothing after the welcome).
    server.send_tls13_tickets = 0;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certificates, key)
        .map_err(both)?;
    Ok(PeerTlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

fn load_secrets(path: &Path) -> Result<Arc<Secrets>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut secrets = Vec::new();
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let secret = line.trim_ascii();
        if secret.is_empty() {
            continue;
        }
        if secret.len() < SECRET_LEN_MIN {
            return Err(format!(
                "{} line {}: a cluster secret needs at least {SECRET_LEN_MIN} bytes (it has \
                 {}); for example `head -c 32 /dev/urandom | base64 > FILE`",
                path.display(),
                number + 1,
                secret.len()
            ));
        }
        secrets.push(secret.to_vec());
    }
    if secrets.is_empty() {
        return Err(format!("{}: no cluster secret in it", path.display()));
    }
    Ok(Arc::new(Secrets(secrets)))
}

impl PeerSecurity {
    /// Reads what `files` name; an error says which file and why.
    pub fn load(files: PeerSecurityFiles) -> Result<PeerSecurity, String> {
        let tls = files.tls.as_ref().map(load_tls).transpose()?;
        let secrets = files.secret_file.as_deref().map(load_secrets).transpose()?;
        Ok(PeerSecurity {
            files,
            tls: RwLock::new(tls.map(Arc::new)),
            secrets: RwLock::new(secrets),
        })
    }

    /// Links that prove nothing (a node of one, or loopback-only clusters without either).
    pub fn none() -> PeerSecurity {
        PeerSecurity {
            files: PeerSecurityFiles::default(),
            tls: RwLock::new(None),
            secrets: RwLock::new(None),
        }
    }

    /// Whether anything is configured to reload.
    pub fn is_configured(&self) -> bool {
        self.files.authenticates()
    }

    /// Reads the files again (SIGHUP); on an error what is in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let tls = self.files.tls.as_ref().map(load_tls).transpose()?;
        let secrets = self
            .files
            .secret_file
            .as_deref()
            .map(load_secrets)
            .transpose()?;
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls.map(Arc::new);
        *self.secrets.write().unwrap_or_else(|e| e.into_inner()) = secrets;
        Ok(())
    }

    /// The TLS configurations new links use, if peer TLS is on.
    pub fn tls(&self) -> Option<Arc<PeerTlsConfigs>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cluster secrets, if there are any.
    pub fn secrets(&self) -> Option<Arc<Secrets>> {
        self.secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Which side of a link a proof is by: the two never verify each other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node that answered the hello (its proof goes in the welcome).
    Answering,
    /// The node that dialled (its proof follows the welcome).
    Dialing,
}

/// The proof that `side` knows the secret, bound to this link's nonces and both node ids,
/// so it cannot be replayed on another link or reflected back.
fn proof(secret: &[u8], side: Side, link: LinkStart<'_>) -> Vec<u8> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(match side {
        Side::Answering => b"kvs peer link: answering node",
        Side::Dialing => b"kvs peer link: dialing node  ",
    });
    mac.update(&link.dialer.to_le_bytes());
    mac.update(&(link.dialer_nonce.len() as u32).to_le_bytes());
    mac.update(link.dialer_nonce);
    mac.update(&link.answerer.to_le_bytes());
    mac.update(&(link.answerer_nonce.len() as u32).to_le_bytes());
    mac.update(link.answerer_nonce);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `got` is the proof `expected`, compared in constant time.
fn proof_matches(expected: &[u8], got: &[u8]) -> bool {
    expected.len() == got.len()
        && expected
            .iter()
            .zip(got)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// A fresh nonce for a hello or a welcome.
pub fn nonce() -> Vec<u8> {
    kvs_wire::auth::random_bytes(NONCE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link<'a>(dialer: u64, a: &'a [u8], answerer: u64, b: &'a [u8]) -> LinkStart<'a> {
        LinkStart {
            dialer,
            dialer_nonce: a,
            answerer,
            answerer_nonce: b,
        }
    }

    #[test]
    fn proofs_bind_the_side_the_nodes_the_nonces_and_the_secret() {
        let secret = b"0123456789abcdef-secret";
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b, "nonces are random");
        let p = proof(secret, Side::Dialing, link(1, &a, 2, &b));
        assert!(proof_matches(
            &p,
            &proof(secret, Side::Dialing, link(1, &a, 2, &b))
        ));
        let fresh = nonce();
        for other in [
            proof(secret, Side::Answering, link(1, &a, 2, &b)),
            proof(secret, Side::Dialing, link(3, &a, 2, &b)),
            proof(secret, Side::Dialing, link(1, &b, 2, &a)),
            proof(secret, Side::Dialing, link(1, &a, 2, &fresh)),
            proof(
                b"another secret of 16+ bytes",
                Side::Dialing,
                link(1, &a, 2, &b),
            ),
        ] {
            assert!(!proof_matches(&p, &other));
        }
        assert!(!proof_matches(&p, &p[..31]));
        assert!(!proof_matches(&p, &[]));
    }

    #[test]
    fn secret_files_are_checked_and_a_second_secret_is_taken_while_rotating() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let files = PeerSecurityFiles {
            tls: None,
            secret_file: Some(file.clone()),
        };
        std::fs::write(&file, "  too short \n").unwrap();
        let error = PeerSecurity::load(files.clone()).unwrap_err();
        assert!(
            error.contains("line 1") && error.contains("at least 16 bytes"),
            "{error}"
        );
        std::fs::write(&file, "\n\n").unwrap();
        let error = PeerSecurity::load(files.clone()).unwrap_err();
        assert!(error.contains("no cluster secret"), "{error}");
        std::fs::remove_file(&file).unwrap();
        let error = PeerSecurity::load(files.clone()).unwrap_err();
        assert!(error.contains("secret"), "{error}");

        std::fs::write(&file, "the-old-secret-0123\n").unwrap();
        let old = PeerSecurity::load(files.clone()).unwrap();
        std::fs::write(&file, "the-new-secret-4567\nthe-old-secret-0123\n").unwrap();
        let new = PeerSecurity::load(files.clone()).unwrap();
        assert!(!format!("{new:?}").contains("secret-0123"));
        let (a, b) = (nonce(), nonce());
        let start = link(1, &a, 2, &b);
        let (old, new) = (old.secrets().unwrap(), new.secrets().unwrap());
        // The node moved to the new secret takes the old one's proof, and is not taken by it.
        assert!(new.accepts(Side::Dialing, start, &old.prove(Side::Dialing, start)));
        assert!(!old.accepts(Side::Dialing, start, &new.prove(Side::Dialing, start)));
        assert!(!new.accepts(Side::Answering, start, &old.prove(Side::Dialing, start)));

        // A file that went bad keeps the secrets in use.
        let security = PeerSecurity::load(files).unwrap();
        std::fs::write(&file, "short").unwrap();
        assert!(security.reload().is_err());
        assert!(security.secrets().unwrap().accepts(
            Side::Dialing,
            start,
            &new.prove(Side::Dialing, start)
        ));
    }
}
