//! Users, roles and the password proof (ADR 0025): what a users file line holds, and the
//! SCRAM exchange (RFC 5802's, with argon2id as its key derivation) by which a native client
//! proves it knows a password without sending it, and the server proves it holds the user's
//! verifier. Shared by the server (which checks), the client (which proves) and the CLI
//! (which writes users files).
//!
//! - SaltedPassword = argon2id(password, salt); ClientKey = HMAC(SaltedPassword, "Client
//!   Key"); StoredKey = SHA-256(ClientKey); ServerKey = HMAC(SaltedPassword, "Server Key").
//!   The server keeps salt, parameters, StoredKey and ServerKey (the [`Verifier`]).
//! - The exchange: the client sends its user and nonce; the server answers the salt, the
//!   parameters and its own nonce; the client sends ClientProof = ClientKey XOR
//!   HMAC(StoredKey, AuthMessage); the server recovers ClientKey, checks its hash against
//!   StoredKey, and answers HMAC(ServerKey, AuthMessage), which the client checks.
//!   AuthMessage is the user, the client's nonce and the server's nonce, each length-prefixed.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A user and password a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: keys, documents, INFO, read-only transactions.
    Read = 1,
    /// Reads and writes, transactions, index commands.
    ReadWrite = 2,
    /// Everything: also leadership transfers and backups.
    Admin = 3,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "readwrite" => Some(Role::ReadWrite),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn from_u8(byte: u8) -> Option<Role> {
        match byte {
            1 => Some(Role::Read),
            2 => Some(Role::ReadWrite),
            3 => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// argon2id's cost: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

/// OWASP's baseline for argon2id (19 MiB, 2 passes, 1 lane).
pub const COST_DEFAULT: Cost = Cost {
    memory_kib: 19 * 1024,
    passes: 2,
    lanes: 1,
};

/// The most a verifier may ask a client to spend (a server that asks more is refused).
const MEMORY_KIB_MAX: u32 = 1024 * 1024;
const PASSES_MAX: u32 = 64;
const LANES_MAX: u32 = 16;

/// A salt's bytes.
pub const SALT_LEN: usize = 16;
/// A nonce's bytes (each side's).
pub const NONCE_LEN: usize = 24;
/// A key's, proof's or signature's bytes.
pub const KEY_LEN: usize = 32;

impl Cost {
    /// Whether a client may spend this (limits what a server can make it do).
    pub fn is_sane(&self) -> bool {
        (8..=MEMORY_KIB_MAX).contains(&self.memory_kib)
            && (1..=PASSES_MAX).contains(&self.passes)
            && (1..=LANES_MAX).contains(&self.lanes)
            && self.memory_kib >= 8 * self.lanes
    }
}

/// What the server keeps of a password: enough to check a proof, never enough to make one.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub cost: Cost,
    pub stored_key: [u8; KEY_LEN],
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys, even in a log line.
        f.debug_struct("Verifier")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// The prefix of a verifier as a users file writes it.
const SCHEME: &str = "scram-argon2id";

/// Why a verifier, a users file line or a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

fn err(message: impl Into<String>) -> AuthError {
    AuthError(message.into())
}

/// argon2id of `password` with `salt` at `cost`.
pub fn salted_password(
    password: &[u8],
    salt: &[u8],
    cost: Cost,
) -> Result<[u8; KEY_LEN], AuthError> {
    if !cost.is_sane() {
        return Err(err(format!("argon2 cost out of bounds: {cost:?}")));
    }
    let params = Params::new(cost.memory_kib, cost.passes, cost.lanes, Some(KEY_LEN))
        .map_err(|e| err(format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; KEY_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| err(format!("argon2: {e}")))?;
    Ok(out)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn client_key(salted: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    hmac(salted, b"Client Key")
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `len` random bytes from the kernel.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the kernel's random source");
    bytes
}

impl Verifier {
    /// The verifier of `password` with a new random salt.
    pub fn new(password: &[u8], cost: Cost) -> Result<Verifier, AuthError> {
        Verifier::with_salt(password, random_bytes(SALT_LEN), cost)
    }

    pub fn with_salt(password: &[u8], salt: Vec<u8>, cost: Cost) -> Result<Verifier, AuthError> {
        let salted = salted_password(password, &salt, cost)?;
        Ok(Verifier::from_salted(&salted, salt, cost))
    }

    fn from_salted(salted: &[u8; KEY_LEN], salt: Vec<u8>, cost: Cost) -> Verifier {
        Verifier {
            salt,
            cost,
            stored_key: sha256(&client_key(salted)),
            server_key: hmac(salted, b"Server Key"),
        }
    }

    /// Whether `password` is this verifier's (RESP's AUTH, which sends the password itself).
    /// Costs one argon2id: run it off the cores that serve requests.
    pub fn check_password(&self, password: &[u8]) -> bool {
        match salted_password(password, &self.salt, self.cost) {
            Ok(salted) => same(&sha256(&client_key(&salted)), &self.stored_key),
            Err(_) => false,
        }
    }

    /// Checks a client's proof of the exchange `auth_message`; the server's signature to
    /// answer when it holds.
    pub fn check_proof(&self, auth_message: &[u8], proof: &[u8]) -> Option<[u8; KEY_LEN]> {
        let proof: &[u8; KEY_LEN] = proof.try_into().ok()?;
        let signature = hmac(&self.stored_key, auth_message);
        let client_key = xor(proof, &signature);
        same(&sha256(&client_key), &self.stored_key).then(|| hmac(&self.server_key, auth_message))
    }

    /// The form a users file keeps: `scram-argon2id$m=M,t=T,p=P$SALT$STOREDKEY$SERVERKEY`.
    pub fn encode(&self) -> String {
        format!(
            "{SCHEME}$m={},t={},p={}${}${}${}",
            self.cost.memory_kib,
            self.cost.passes,
            self.cost.lanes,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    pub fn parse(text: &str) -> Result<Verifier, AuthError> {
        let parts: Vec<&str> = text.split('$').collect();
        let [scheme, cost, salt, stored, server] = parts.as_slice() else {
            return Err(err(format!(
                "a password hash is {SCHEME}$m=M,t=T,p=P$SALT$STOREDKEY$SERVERKEY (written by \
                 `kvs user add`)"
            )));
        };
        if *scheme != SCHEME {
            return Err(err(format!(
                "unknown password hash scheme {scheme:?}: only {SCHEME}"
            )));
        }
        let mut numbers = [None; 3];
        for field in cost.split(',') {
            let (name, value) = field.split_once('=').unwrap_or((field, ""));
            let slot = match name {
                "m" => 0,
                "t" => 1,
                "p" => 2,
                other => return Err(err(format!("unknown argon2 parameter {other:?}"))),
            };
            numbers[slot] = Some(value.parse::<u32>().map_err(|_| {
                err(format!(
                    "argon2 parameter {name} is not a number: {value:?}"
                ))
            })?);
        }
        let [Some(memory_kib), Some(passes), Some(lanes)] = numbers else {
            return Err(err("the argon2 parameters are m=..,t=..,p=.."));
        };
        let cost = Cost {
            memory_kib,
            passes,
            lanes,
        };
        if !cost.is_sane() {
            return Err(err(format!("argon2 cost out of bounds: {cost:?}")));
        }
        let key = |what: &str, text: &str| -> Result<[u8; KEY_LEN], AuthError> {
            B64.decode(text)
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| err(format!("the {what} is not {KEY_LEN} bytes of base64")))
        };
        let salt = B64
            .decode(salt)
            .map_err(|_| err("the salt is not base64"))?;
        if salt.len() < 8 {
            return Err(err("the salt is shorter than 8 bytes"));
        }
        Ok(Verifier {
            salt,
            cost,
            stored_key: key("stored key", stored)?,
            server_key: key("server key", server)?,
        })
    }
}

/// The bytes both sides sign: the user, the client's nonce and the server's nonce, each
/// length-prefixed (so no two exchanges share one).
pub fn auth_message(user: &str, client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [user.as_bytes(), client_nonce, server_nonce] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The client's side: its proof for the exchange, and the server signature it expects.
pub fn client_proof(
    password: &[u8],
    salt: &[u8],
    cost: Cost,
    auth_message: &[u8],
) -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), AuthError> {
    let salted = salted_password(password, salt, cost)?;
    let verifier = Verifier::from_salted(&salted, salt.to_vec(), cost);
    let signature = hmac(&verifier.stored_key, auth_message);
    let proof = xor(&client_key(&salted), &signature);
    Ok((proof, hmac(&verifier.server_key, auth_message)))
}

/// Whether the server's signature is the one expected (constant time).
pub fn server_signature_matches(expected: &[u8; KEY_LEN], got: &[u8]) -> bool {
    same(expected, got)
}

/// The salt and cost a server answers for a user it does not know: made up from the name
/// and the server's secret, the same every time, so the answer does not tell that the user
/// does not exist (the proof then fails like a wrong password's).
pub fn made_up_salt(secret: &[u8], user: &str) -> Vec<u8> {
    hmac(secret, user.as_bytes())[..SALT_LEN].to_vec()
}

/// A users file line, `NAME ROLE HASH`: its parts.
pub fn parse_user_line(line: &str) -> Result<(String, Role, Verifier), AuthError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, role, hash] = fields.as_slice() else {
        return Err(err("a user is NAME ROLE HASH on one line"));
    };
    check_user_name(name)?;
    let role = Role::parse(role)
        .ok_or_else(|| err(format!("unknown role {role:?}: read, readwrite or admin")))?;
    Ok((name.to_string(), role, Verifier::parse(hash)?))
}

/// The line a users file keeps for a user.
pub fn user_line(name: &str, role: Role, verifier: &Verifier) -> String {
    format!("{name} {role} {}", verifier.encode())
}

/// A user name: 1 to 64 of letters, digits and `_.@-`.
pub fn check_user_name(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "bad user name {name:?}: 1 to 64 letters, digits, '_', '.', '@' or '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check the exchange, not argon2's cost.
    const CHEAP: Cost = Cost {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn a_proof_from_the_password_passes_and_any_other_fails() {
        let verifier = Verifier::new(b"secret", CHEAP).unwrap();
        let message = auth_message("ann", b"client-nonce", b"server-nonce");
        let (proof, expected) = client_proof(b"secret", &verifier.salt, CHEAP, &message).unwrap();
        let signature = verifier
            .check_proof(&message, &proof)
            .expect("the right password");
        assert!(server_signature_matches(&expected, &signature));
        let (wrong, _) = client_proof(b"Secret", &verifier.salt, CHEAP, &message).unwrap();
        assert!(verifier.check_proof(&message, &wrong).is_none());
        // A proof is good for its exchange only.
        let other = auth_message("ann", b"client-nonce", b"another-nonce");
        assert!(verifier.check_proof(&other, &proof).is_none());
        assert!(verifier.check_proof(&message, &proof[..31]).is_none());
        // The verifier's keys do not make a proof: the stored key is not the client key.
        let forged = xor(&verifier.stored_key, &hmac(&verifier.stored_key, &message));
        assert!(verifier.check_proof(&message, &forged).is_none());
        assert!(verifier.check_password(b"secret"));
        assert!(!verifier.check_password(b"secret "));
    }

    #[test]
    fn a_users_file_line_round_trips_and_bad_ones_say_why() {
        let verifier = Verifier::new(b"pw", CHEAP).unwrap();
        let line = user_line("ann", Role::ReadWrite, &verifier);
        let (name, role, back) = parse_user_line(&line).unwrap();
        assert_eq!((name.as_str(), role), ("ann", Role::ReadWrite));
        assert_eq!(back, verifier);
        assert!(!format!("{verifier:?}").contains(&B64.encode(verifier.stored_key)));
        for (bad, why) in [
            ("ann readwrite", "NAME ROLE HASH"),
            ("ann root x", "unknown role"),
            ("a/b read x", "bad user name"),
            ("ann read md5$x", "a password hash is"),
            ("ann read bcrypt$a$b$c$d", "unknown password hash scheme"),
        ] {
            let error = parse_user_line(bad).unwrap_err();
            assert!(error.0.contains(why), "{bad}: {error}");
        }
        let greedy = line.replace("m=64,", "m=999999999,");
        assert!(parse_user_line(&greedy)
            .unwrap_err()
            .0
            .contains("out of bounds"));
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Read < Role::ReadWrite && Role::ReadWrite < Role::Admin);
        for role in [Role::Read, Role::ReadWrite, Role::Admin] {
            assert_eq!(Role::parse(role.name()), Some(role));
            assert_eq!(Role::from_u8(role as u8), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
