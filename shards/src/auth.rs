//! Users and roles on the server (ADR 0025): the users file, the node's authentication
//! settings, each connection's state (its role once authenticated, the exchange in progress,
//! its failed attempts), and the role each request needs.
//!
//! - The users file is read at start and again on SIGHUP ([`Auth::reload`], called by
//!   `sighup`); a file that does not read keeps the users already loaded.
//! - The native protocol proves the password by SCRAM (`kvs_wire::auth`): the server answers
//!   AUTH_START with the salt and cost (made up for an unknown user) and checks AUTH_FINISH's
//!   proof with HMACs only. RESP's AUTH sends the password itself: its argon2id runs on a
//!   thread of its own, never on a core that serves requests.
//! - A failed attempt is logged and answered after [`FAILED_PAUSE`]; after
//!   [`FAILURES_MAX`] the connection is closed.
//! - With `--auth off` every connection has the admin role from the start, and the checks
//!   are one branch per request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kvs_wire::auth::{
    auth_message, made_up_salt, parse_user_line, random_bytes, Role, Verifier, COST_DEFAULT,
    KEY_LEN, NONCE_LEN,
};
use kvs_wire::{ErrorCode, Request, Response};

/// How long a failed attempt waits for its answer.
pub const FAILED_PAUSE: Duration = Duration::from_millis(250);
/// Failed attempts after which a connection is closed.
pub const FAILURES_MAX: u32 = 5;

/// The users a node knows, by name.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, (Role, Verifier)>,
}

impl Users {
    /// Reads a users file: `NAME ROLE HASH` a line; blank lines and `#` comments skipped.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the users file {}: {e}", path.display()))?;
        let mut by_name = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, role, verifier) = parse_user_line(line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), number + 1))?;
            if by_name.insert(name.clone(), (role, verifier)).is_some() {
                return Err(format!(
                    "{} line {}: user {name} is listed twice",
                    path.display(),
                    number + 1
                ));
            }
        }
        Ok(Users { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The node's authentication: whether it is required, and the users.
#[derive(Debug)]
pub struct Auth {
    pub required: bool,
    path: Option<PathBuf>,
    users: RwLock<Arc<Users>>,
    /// Makes up the salts of unknown users.
    secret: Vec<u8>,
}

impl Auth {
    /// No authentication: every connection may do everything.
    pub fn off() -> Auth {
        Auth {
            required: false,
            path: None,
            users: RwLock::new(Arc::new(Users::default())),
            secret: random_bytes(KEY_LEN),
        }
    }

    /// Authentication required, with the users of `path`.
    pub fn required(path: &Path) -> Result<Auth, String> {
        let users = Users::load(path)?;
        Ok(Auth {
            required: true,
            path: Some(path.to_path_buf()),
            users: RwLock::new(Arc::new(users)),
            secret: random_bytes(KEY_LEN),
        })
    }

    /// Reads the users file again (SIGHUP); how many users it has now. On an error the users
    /// already loaded stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let users = Users::load(path)?;
        let count = users.len();
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        Ok(count)
    }

    fn user(&self, name: &str) -> Option<(Role, Verifier)> {
        let users = Arc::clone(&self.users.read().unwrap_or_else(|e| e.into_inner()));
        users.by_name.get(name).cloned()
    }

    /// The role a new connection has before it authenticates.
    pub fn initial_role(&self) -> Option<Role> {
        (!self.required).then_some(Role::Admin)
    }
}

/// An exchange between AUTH_START and AUTH_FINISH.
struct Exchange {
    user: String,
    message: Vec<u8>,
    known: Option<(Role, Verifier)>,
}

/// One connection's authentication.
pub struct ConnAuth {
    role: Cell<Option<Role>>,
    exchange: RefCell<Option<Box<Exchange>>>,
    failures: Cell<u32>,
}

impl ConnAuth {
    pub fn new(auth: &Auth) -> ConnAuth {
        ConnAuth {
            role: Cell::new(auth.initial_role()),
            exchange: RefCell::new(None),
            failures: Cell::new(0),
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.role.get()
    }

    /// Whether it failed too often and is to be closed.
    pub fn exhausted(&self) -> bool {
        self.failures.get() >= FAILURES_MAX
    }

    /// Checks that the connection may run a request needing `needed` (None: anything may).
    pub fn permits(&self, needed: Option<Role>, what: &str) -> Result<(), (ErrorCode, String)> {
        let Some(needed) = needed else {
            return Ok(());
        };
        match self.role.get() {
            Some(role) if role >= needed => Ok(()),
            Some(role) => Err((
                ErrorCode::NoPerm,
                format!("{what} needs the {needed} role; this user has {role}"),
            )),
            None => Err((
                ErrorCode::NoAuth,
                format!("authentication required before {what}"),
            )),
        }
    }

    /// AUTH_START: the salt, cost and server nonce for `user`'s proof.
    pub fn start(&self, auth: &Auth, user: String, client_nonce: Vec<u8>) -> Response {
        let known = auth.user(&user);
        let (salt, cost) = match &known {
            Some((_, verifier)) => (verifier.salt.clone(), verifier.cost),
            None => (made_up_salt(&auth.secret, &user), COST_DEFAULT),
        };
        let nonce = random_bytes(NONCE_LEN);
        let message = auth_message(&user, &client_nonce, &nonce);
        *self.exchange.borrow_mut() = Some(Box::new(Exchange {
            user,
            message,
            known,
        }));
        Response::AuthChallenge { salt, cost, nonce }
    }

    /// AUTH_FINISH: checks the proof of the exchange begun; the role and the server's
    /// signature, or AUTH_FAILED after a pause.
    pub async fn finish(&self, proof: &[u8], peer: &str) -> Response {
        let Some(exchange) = self.exchange.borrow_mut().take() else {
            return Response::error(ErrorCode::BadRequest, "AUTH_FINISH without AUTH_START");
        };
        let granted = exchange.known.as_ref().and_then(|(role, verifier)| {
            let signature = verifier.check_proof(&exchange.message, proof)?;
            Some((*role, signature))
        });
        match granted {
            Some((role, signature)) => {
                self.granted(role, &exchange.user, peer);
                Response::Authenticated {
                    role,
                    signature: signature.to_vec(),
                }
            }
            None => {
                self.failed(&exchange.user, peer).await;
                failed_response()
            }
        }
    }

    /// RESP's AUTH: checks `password` (off the core) and takes the user's role.
    pub async fn with_password(
        &self,
        auth: &Auth,
        user: &str,
        password: Vec<u8>,
        peer: &str,
    ) -> Result<Role, ()> {
        let known = auth.user(user);
        let role = match known {
            Some((role, verifier)) => check_off_core(verifier, password).await.then_some(role),
            None => None,
        };
        match role {
            Some(role) => {
                self.granted(role, user, peer);
                Ok(role)
            }
            None => {
                self.failed(user, peer).await;
                Err(())
            }
        }
    }

    fn granted(&self, role: Role, user: &str, peer: &str) {
        self.role.set(Some(role));
        self.failures.set(0);
        tracing::debug!(user, peer, %role, "authenticated");
    }

    async fn failed(&self, user: &str, peer: &str) {
        self.failures.set(self.failures.get() + 1);
        tracing::warn!(
            user,
            peer,
            attempts = self.failures.get(),
            "failed login (wrong user or password)"
        );
        crate::runtime::wait(FAILED_PAUSE).await;
    }
}

fn failed_response() -> Response {
    Response::error(ErrorCode::AuthFailed, "wrong user or password")
}

/// Runs argon2id for `password` on a thread of its own; whether it matches.
async fn check_off_core(verifier: Verifier, password: Vec<u8>) -> bool {
    let (sender, receiver) = crate::runtime::cross_core_channel(1);
    let spawned = std::thread::Builder::new()
        .name("kvsd-auth".into())
        .spawn(move || {
            let _ = sender.try_send(verifier.check_password(&password));
        });
    if spawned.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    receiver.recv_all(&mut answer).await;
    answer.first().copied().unwrap_or(false)
}

/// The least role a native request needs; None: allowed before authentication (PING and
/// the AUTH exchange).
pub fn native_role(request: &Request) -> Option<Role> {
    Some(match request {
        Request::Ping | Request::AuthStart { .. } | Request::AuthFinish { .. } => return None,
        Request::Get { .. }
        | Request::GetStale { .. }
        | Request::MGet { .. }
        | Request::Scan { .. }
        | Request::Info
        | Request::Begin { .. }
        | Request::Commit { .. }
        | Request::Rollback { .. } => Role::Read,
        Request::Document { command } => document_role(command),
        Request::InTxn { request, .. } | Request::Once { request, .. } => {
            native_role(request).unwrap_or(Role::Read)
        }
        Request::Put { .. }
        | Request::Delete { .. }
        | Request::Cas { .. }
        | Request::MPut { .. } => Role::ReadWrite,
        Request::TransferLeader { .. } | Request::Backup { .. } => Role::Admin,
    })
}

/// The role a document command needs: reads for find, count, aggregate, explain and the
/// listings; readwrite for the rest (and for a command whose name cannot be read: it is
/// refused later anyway).
pub fn document_role(command: &[u8]) -> Role {
    match first_key(command).as_deref() {
        Some("find" | "count" | "aggregate" | "explain" | "listIndexes" | "listCollections") => {
            Role::Read
        }
        _ => Role::ReadWrite,
    }
}

/// The first key of a JSON object, read without parsing the rest.
fn first_key(json: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(json).ok()?.trim_start();
    let text = text.strip_prefix('{')?.trim_start();
    let text = text.strip_prefix('"')?;
    let end = text.find(['"', '\\'])?;
    (text.as_bytes()[end] == b'"').then(|| text[..end].to_string())
}

/// The least role a RESP command needs (its name in lower case); None: allowed before
/// authentication.
pub fn resp_role(name: &str) -> Option<Role> {
    Some(match name {
        "ping" | "hello" | "auth" | "quit" | "reset" => return None,
        "get" | "mget" | "exists" | "strlen" | "type" | "dbsize" | "scan" | "keys" | "echo"
        | "info" | "memory" | "command" | "select" | "client" | "config" | "multi" | "exec"
        | "discard" | "watch" | "unwatch" | "time" => Role::Read,
        "flushdb" | "flushall" => Role::Admin,
        _ => Role::ReadWrite,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_need_the_roles_the_adr_gives_them() {
        let get = Request::Get { key: b"k".to_vec() };
        let put = Request::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        assert_eq!(native_role(&Request::Ping), None);
        assert_eq!(native_role(&get), Some(Role::Read));
        assert_eq!(native_role(&put), Some(Role::ReadWrite));
        let in_txn = |request: Request| Request::InTxn {
            txn: 1,
            for_update: false,
            request: Box::new(request),
        };
        assert_eq!(native_role(&in_txn(get)), Some(Role::Read));
        assert_eq!(native_role(&in_txn(put)), Some(Role::ReadWrite));
        let backup = Request::Backup {
            shard: 0,
            id: 0,
            number: 0,
        };
        assert_eq!(native_role(&backup), Some(Role::Admin));
        for (command, role) in [
            (r#"{"find": "c"}"#, Role::Read),
            (r#" { "aggregate" : "c", "pipeline": []}"#, Role::Read),
            (r#"{"insert": "c", "documents": []}"#, Role::ReadWrite),
            (r#"{"fi\"nd": "c"}"#, Role::ReadWrite),
            ("not json", Role::ReadWrite),
        ] {
            assert_eq!(document_role(command.as_bytes()), role, "{command}");
        }
        assert_eq!(resp_role("auth"), None);
        assert_eq!(resp_role("get"), Some(Role::Read));
        assert_eq!(resp_role("set"), Some(Role::ReadWrite));
        assert_eq!(resp_role("flushall"), Some(Role::Admin));
    }

    #[test]
    fn a_connection_is_refused_until_it_authenticates_and_then_by_role() {
        let off = Auth::off();
        assert!(ConnAuth::new(&off)
            .permits(Some(Role::Admin), "BACKUP")
            .is_ok());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "# none yet\n\n").unwrap();
        let auth = Auth::required(&path).unwrap();
        let conn = ConnAuth::new(&auth);
        let (code, _) = conn.permits(Some(Role::Read), "GET").unwrap_err();
        assert_eq!(code, ErrorCode::NoAuth);
        assert!(conn.permits(None, "PING").is_ok());
        conn.role.set(Some(Role::Read));
        let (code, message) = conn.permits(Some(Role::ReadWrite), "PUT").unwrap_err();
        assert_eq!(code, ErrorCode::NoPerm);
        assert!(message.contains("readwrite"), "{message}");
        // A bad file names its line, and reloading it keeps the users loaded.
        std::fs::write(&path, "ann read x\n").unwrap();
        assert!(auth.reload().unwrap_err().contains("line 1"));
    }
}
