//! Requests and responses: opcodes, error codes and the body encoding of each message.
//!
//! Bodies are sequences of fixed-width little-endian integers and byte strings; a byte string
//! is a u32 LE length followed by that many bytes. The layout of every body is in
//! `docs/protocol.md`.

use crate::auth::{Cost, Role};
pub use crate::error_code::ErrorCode;
use crate::frame::{encode_frame, Header, FLAG_ERROR, FLAG_RESPONSE};
pub use crate::isolation::Isolation;
use crate::limits::{
    BATCH_COUNT_MAX, DOCUMENT_SIZE_MAX, ERROR_MESSAGE_SIZE_MAX, KEY_SIZE_MAX, SCAN_LIMIT_MAX,
    VALUE_SIZE_MAX,
};

/// Operation codes. A reply carries the opcode of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Ping = 1,
    Get = 2,
    Put = 3,
    Delete = 4,
    Cas = 5,
    MGet = 6,
    MPut = 7,
    Scan = 8,
    Info = 9,
    /// A document command: a JSON command document in, a JSON reply out.
    Document = 10,
    /// GET answered from the replica of the node asked, without asking the shard's leader
    /// (in a cluster: possibly stale).
    GetStale = 11,
    /// Makes a node the preferred leader of a shard; leadership moves there.
    TransferLeader = 12,
    /// A write (PUT, DELETE, CAS, MPUT) tagged with the client's session and sequence
    /// number, applied at most once however often it is sent (ADR 0018). Its reply is the
    /// inner request's, with the inner request's opcode.
    Once = 13,
    /// A piece of one shard's backup (`kvs backup`, docs/operations.md): the node's newest
    /// checkpoint of the shard, taken for the backup, in runs of pages.
    Backup = 14,
    /// Begins a transaction (ADR 0022, docs/transactions.md): isolation in, its id out.
    Begin = 15,
    /// A request (GET, PUT, DELETE, CAS, MGET, SCAN, DOCUMENT) inside a transaction;
    /// answered like the inner request, with its opcode.
    InTxn = 16,
    /// Commits a transaction: answered with the written keys' versions once every shard
    /// applied it.
    Commit = 17,
    /// Rolls a transaction back: its locks are released and nothing of it is applied.
    Rollback = 18,
    /// Starts authenticating (ADR 0025): a user and the client's nonce in; the salt, the
    /// argon2 cost and the server's nonce out.
    AuthStart = 19,
    /// Finishes authenticating: the client's proof in; the role and the server's signature
    /// out, or AUTH_FAILED.
    AuthFinish = 20,
}

impl Opcode {
    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Some(match byte {
            1 => Opcode::Ping,
            2 => Opcode::Get,
            3 => Opcode::Put,
            4 => Opcode::Delete,
            5 => Opcode::Cas,
            6 => Opcode::MGet,
            7 => Opcode::MPut,
            8 => Opcode::Scan,
            9 => Opcode::Info,
            10 => Opcode::Document,
            11 => Opcode::GetStale,
            12 => Opcode::TransferLeader,
            13 => Opcode::Once,
            14 => Opcode::Backup,
            15 => Opcode::Begin,
            16 => Opcode::InTxn,
            17 => Opcode::Commit,
            18 => Opcode::Rollback,
            19 => Opcode::AuthStart,
            20 => Opcode::AuthFinish,
            _ => return None,
        })
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Get {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Writes `value` (or deletes, when `None`) only if the key's current version is
    /// `expected_version`; version 0 means "the key does not exist".
    Cas {
        key: Vec<u8>,
        expected_version: u64,
        value: Option<Vec<u8>>,
    },
    MGet {
        keys: Vec<Vec<u8>>,
    },
    MPut {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Keys in `[start, end)` in byte order across all shards, at most `limit` of them.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    Info,
    /// A document command: JSON text such as `{"find": "people", "filter": {...}}`
    /// (`docs/documents.md` lists the commands).
    Document {
        command: Vec<u8>,
    },
    /// A GET the node asked answers from its own replica (see [`Opcode::GetStale`]).
    GetStale {
        key: Vec<u8>,
    },
    /// Makes `node` the preferred leader of shard `shard` (replicated through the shard's
    /// log); the leader hands leadership over once `node` has caught up.
    TransferLeader {
        shard: u32,
        node: u64,
    },
    /// `request` (a PUT, DELETE, CAS or MPUT) as write `seq` of client session `session`:
    /// applied at most once, and a retry answered with the first answer (ADR 0018).
    /// `acked_below`: the client has the replies to every write of the session below it.
    Once {
        session: u64,
        seq: u64,
        acked_below: u64,
        request: Box<Request>,
    },
    /// Chunk `number` of backup `id` of shard `shard` (id 0, number 0: start a backup of the
    /// shard: the node writes a checkpoint and holds it until the backup is read out).
    /// Answered by the node asked, from its own replica.
    Backup {
        shard: u32,
        id: u64,
        number: u32,
    },
    /// Begins a transaction on this connection.
    Begin {
        isolation: Isolation,
    },
    /// `request` (GET, PUT, DELETE, CAS, MGET or SCAN) inside transaction `txn`.
    /// `for_update`: a GET or MGET locks its keys exclusively, as the write that will follow
    /// (`SELECT ... FOR UPDATE`): two read-modify-writes of one key then queue instead of
    /// deadlocking on their shared locks.
    InTxn {
        txn: u64,
        for_update: bool,
        request: Box<Request>,
    },
    Commit {
        txn: u64,
    },
    Rollback {
        txn: u64,
    },
    /// The first step of the password proof (ADR 0025): who, and the client's nonce.
    AuthStart {
        user: String,
        nonce: Vec<u8>,
    },
    /// The second: the client's proof (`auth::client_proof`).
    AuthFinish {
        proof: Vec<u8>,
    },
}

/// The largest user name, nonce, salt, proof or signature an AUTH exchange carries.
const AUTH_FIELD_SIZE_MAX: usize = 256;

/// Bytes before the inner request in an IN_TXN body: txn, for-update flag, opcode.
const IN_TXN_HEADER: usize = 10;

/// One chunk of a shard's backup: the first carries the checkpoint's meta page and how many
/// pages follow; the others a run of consecutive pages. The CRC32C covers meta and pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupChunk {
    /// The backup's id on the node: the next chunks are asked for under it.
    pub id: u64,
    /// The log position the checkpoint reflects.
    pub index: u64,
    pub term: u64,
    pub number: u32,
    pub total_pages: u64,
    pub first: u64,
    pub meta: Vec<u8>,
    pub pages: Vec<u8>,
    pub crc: u32,
    pub last: bool,
}

/// The largest run of pages a backup chunk carries (4 KiB pages).
pub const BACKUP_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Bytes before the inner request in a ONCE body: session, seq, acked_below, opcode.
const ONCE_HEADER: usize = 25;

/// A server reply. `Error` travels with the ERROR flag; the others are shaped by the opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Pong,
    /// GET: the value and its version.
    Value {
        version: u64,
        value: Vec<u8>,
    },
    /// PUT and CAS: the version the write created (0 after a CAS delete).
    Written {
        version: u64,
    },
    Deleted {
        existed: bool,
    },
    /// MGET: one entry per requested key, in request order.
    Values(Vec<Option<(u64, Vec<u8>)>>),
    /// MPUT: the version of each pair, in request order.
    Versions(Vec<u64>),
    /// SCAN: pairs in key order; `next` is where to continue, when there may be more.
    Scanned {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        next: Option<Vec<u8>>,
    },
    /// INFO: a JSON document.
    Info(String),
    /// DOCUMENT: the command's reply, JSON text.
    Document(String),
    /// BACKUP: one chunk of a shard's backup.
    BackupChunk(BackupChunk),
    /// BEGIN: the new transaction's id.
    Began {
        txn: u64,
    },
    /// COMMIT: each key the transaction wrote and its new version (0: deleted), in key
    /// order.
    Committed(Vec<(Vec<u8>, u64)>),
    /// ROLLBACK: done (no body).
    Ended,
    /// AUTH_START: what the client needs for its proof.
    AuthChallenge {
        salt: Vec<u8>,
        cost: Cost,
        nonce: Vec<u8>,
    },
    /// AUTH_FINISH: the connection is authenticated as `role`; `signature` proves the server
    /// holds the user's verifier.
    Authenticated {
        role: Role,
        signature: Vec<u8>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_SIZE_MAX {
            let mut cut = ERROR_MESSAGE_SIZE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Response::Error { code, message }
    }
}

/// Why a frame body could not be read as a message. The server answers BAD_REQUEST or
/// TOO_LARGE and keeps the connection: framing is intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("body ends early while reading {0}")]
    Truncated(&'static str),
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes { extra: usize },
    #[error("{what} of {len} bytes exceeds the {} limit", crate::limits::bytes_limit(*max))]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} of {count} exceeds the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            DecodeError::TooLarge { .. } | DecodeError::TooMany { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Cursor over a body with bounds-checked reads.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated(what))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(what))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(v))
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        // One byte of room, for the store's key-space byte in front of a key it applies.
        let mut bytes = Vec::with_capacity(len + 1);
        bytes.extend_from_slice(self.take(len, what)?);
        Ok(bytes)
    }
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        Ok(count)
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Invalid {
                what,
                detail: format!("flag byte {other}"),
            }),
        }
    }
    fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Get { .. } => Opcode::Get,
            Request::Put { .. } => Opcode::Put,
            Request::Delete { .. } => Opcode::Delete,
            Request::Cas { .. } => Opcode::Cas,
            Request::MGet { .. } => Opcode::MGet,
            Request::MPut { .. } => Opcode::MPut,
            Request::Scan { .. } => Opcode::Scan,
            Request::Info => Opcode::Info,
            Request::Document { .. } => Opcode::Document,
            Request::GetStale { .. } => Opcode::GetStale,
            Request::TransferLeader { .. } => Opcode::TransferLeader,
            Request::Once { .. } => Opcode::Once,
            Request::Backup { .. } => Opcode::Backup,
            Request::Begin { .. } => Opcode::Begin,
            Request::InTxn { .. } => Opcode::InTxn,
            Request::Commit { .. } => Opcode::Commit,
            Request::Rollback { .. } => Opcode::Rollback,
            Request::AuthStart { .. } => Opcode::AuthStart,
            Request::AuthFinish { .. } => Opcode::AuthFinish,
        }
    }

    /// The opcode of the reply: the request's, or for a ONCE, its inner request's.
    pub fn reply_opcode(&self) -> Opcode {
        match self {
            Request::Once { request, .. } | Request::InTxn { request, .. } => request.opcode(),
            request => request.opcode(),
        }
    }

    /// Whether a ONCE may carry it: a key-value write.
    pub fn may_be_once(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::Delete { .. }
                | Request::Cas { .. }
                | Request::MPut { .. }
        )
    }

    /// Checks the limits a well-behaved client checks before sending, so that it gets the
    /// same typed error the server would give without a round trip.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        Request::decode_body(self.opcode() as u8, &body).map(|_| ())
    }

    /// Appends this request as a whole frame to `out`.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        encode_frame(out, self.opcode() as u8, request_id, 0, |body| {
            self.encode_body(body)
        });
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Request::Ping | Request::Info => {}
            Request::Get { key } | Request::Delete { key } | Request::GetStale { key } => {
                put_bytes(out, key)
            }
            Request::TransferLeader { shard, node } => {
                put_u32(out, *shard);
                put_u64(out, *node);
            }
            Request::Backup { shard, id, number } => {
                put_u32(out, *shard);
                put_u64(out, *id);
                put_u32(out, *number);
            }
            Request::Once {
                session,
                seq,
                acked_below,
                request,
            } => {
                put_u64(out, *session);
                put_u64(out, *seq);
                put_u64(out, *acked_below);
                out.push(request.opcode() as u8);
                request.encode_body(out);
            }
            Request::Document { command } => put_bytes(out, command),
            Request::Begin { isolation } => out.push(*isolation as u8),
            Request::InTxn {
                txn,
                for_update,
                request,
            } => {
                put_u64(out, *txn);
                out.push(u8::from(*for_update));
                out.push(request.opcode() as u8);
                request.encode_body(out);
            }
            Request::Commit { txn } | Request::Rollback { txn } => put_u64(out, *txn),
            Request::AuthStart { user, nonce } => {
                put_bytes(out, user.as_bytes());
                put_bytes(out, nonce);
            }
            Request::AuthFinish { proof } => put_bytes(out, proof),
            Request::Put { key, value } => {
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Request::Cas {
                key,
                expected_version,
                value,
            } => {
                put_bytes(out, key);
                put_u64(out, *expected_version);
                match value {
                    Some(value) => {
                        out.push(1);
                        put_bytes(out, value);
                    }
                    None => out.push(0),
                }
            }
            Request::MGet { keys } => {
                put_u32(out, keys.len() as u32);
                for key in keys {
                    put_bytes(out, key);
                }
            }
            Request::MPut { pairs } => {
                put_u32(out, pairs.len() as u32);
                for (key, value) in pairs {
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
            }
            Request::Scan { start, end, limit } => {
                put_bytes(out, start);
                match end {
                    Some(end) => {
                        out.push(1);
                        put_bytes(out, end);
                    }
                    None => out.push(0),
                }
                put_u32(out, *limit);
            }
        }
    }

    /// Decodes a request body. Checks every limit; never panics on any input.
    pub fn decode_body(opcode: u8, body: &[u8]) -> Result<Request, DecodeError> {
        let opcode = Opcode::from_u8(opcode).ok_or(DecodeError::UnknownOpcode(opcode))?;
        if opcode == Opcode::Once {
            return Request::decode_once(body);
        }
        if opcode == Opcode::InTxn {
            return Request::decode_in_txn(body);
        }
        let mut r = Reader::new(body);
        let request = match opcode {
            Opcode::Once | Opcode::InTxn => unreachable!("decoded above"),
            Opcode::Begin => Request::Begin {
                isolation: match r.u8("isolation")? {
                    1 => Isolation::ReadCommitted,
                    2 => Isolation::Serializable,
                    3 => Isolation::ReadOnly,
                    other => {
                        return Err(DecodeError::Invalid {
                            what: "isolation",
                            detail: format!(
                                "{other} is not 1 (read committed), 2 (serializable) or 3 \
                                 (read-only)"
                            ),
                        })
                    }
                },
            },
            Opcode::Commit => Request::Commit {
                txn: r.u64("transaction")?,
            },
            Opcode::Rollback => Request::Rollback {
                txn: r.u64("transaction")?,
            },
            Opcode::Ping => Request::Ping,
            Opcode::Info => Request::Info,
            Opcode::AuthStart => Request::AuthStart {
                user: String::from_utf8(r.bytes("user", AUTH_FIELD_SIZE_MAX)?).map_err(|_| {
                    DecodeError::Invalid {
                        what: "user",
                        detail: "not UTF-8".into(),
                    }
                })?,
                nonce: r.bytes("nonce", AUTH_FIELD_SIZE_MAX)?,
            },
            Opcode::AuthFinish => Request::AuthFinish {
                proof: r.bytes("proof", AUTH_FIELD_SIZE_MAX)?,
            },
            Opcode::Document => Request::Document {
                command: r.bytes("document command", DOCUMENT_SIZE_MAX)?,
            },
            Opcode::Get => Request::Get {
                key: r.bytes("key", KEY_SIZE_MAX)?,
            },
            Opcode::GetStale => Request::GetStale {
                key: r.bytes("key", KEY_SIZE_MAX)?,
            },
            Opcode::TransferLeader => Request::TransferLeader {
                shard: r.u32("shard")?,
                node: r.u64("node")?,
            },
            Opcode::Backup => Request::Backup {
                shard: r.u32("shard")?,
                id: r.u64("backup id")?,
                number: r.u32("chunk number")?,
            },
            Opcode::Delete => Request::Delete {
                key: r.bytes("key", KEY_SIZE_MAX)?,
            },
            Opcode::Put => Request::Put {
                key: r.bytes("key", KEY_SIZE_MAX)?,
                value: r.bytes("value", VALUE_SIZE_MAX)?,
            },
            Opcode::Cas => {
                let key = r.bytes("key", KEY_SIZE_MAX)?;
                let expected_version = r.u64("expected version")?;
                let value = if r.flag("value present")? {
                    Some(r.bytes("value", VALUE_SIZE_MAX)?)
                } else {
                    None
                };
                Request::Cas {
                    key,
                    expected_version,
                    value,
                }
            }
            Opcode::MGet => {
                let count = r.count("key count", BATCH_COUNT_MAX)?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    keys.push(r.bytes("key", KEY_SIZE_MAX)?);
                }
                Request::MGet { keys }
            }
            Opcode::MPut => {
                let count = r.count("pair count", BATCH_COUNT_MAX)?;
                let mut pairs = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = r.bytes("key", KEY_SIZE_MAX)?;
                    let value = r.bytes("value", VALUE_SIZE_MAX)?;
                    pairs.push((key, value));
                }
                Request::MPut { pairs }
            }
            Opcode::Scan => {
                let start = r.bytes("start key", KEY_SIZE_MAX)?;
                let end = if r.flag("end present")? {
                    Some(r.bytes("end key", KEY_SIZE_MAX)?)
                } else {
                    None
                };
                let limit = r.u32("limit")?;
                if limit == 0 || limit > SCAN_LIMIT_MAX {
                    return Err(DecodeError::Invalid {
                        what: "limit",
                        detail: format!("{limit} is not in 1..={SCAN_LIMIT_MAX}"),
                    });
                }
                Request::Scan { start, end, limit }
            }
        };
        r.finish()?;
        Ok(request)
    }

    /// Whether a transaction may carry it.
    pub fn may_be_in_txn(&self) -> bool {
        matches!(
            self,
            Request::Get { .. }
                | Request::Put { .. }
                | Request::Delete { .. }
                | Request::Cas { .. }
                | Request::MGet { .. }
                | Request::Scan { .. }
                | Request::Document { .. }
        )
    }

    fn decode_in_txn(body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(body.get(..IN_TXN_HEADER).unwrap_or(body));
        let txn = r.u64("transaction")?;
        let for_update = r.flag("for update")?;
        let inner = r.u8("opcode")?;
        r.finish()?;
        let not_carried = || DecodeError::Invalid {
            what: "IN_TXN",
            detail: format!(
                "it carries GET, PUT, DELETE, CAS, MGET, SCAN or DOCUMENT, not opcode {inner}"
            ),
        };
        if !matches!(inner, 2..=6 | 8 | 10) {
            return Err(not_carried());
        }
        let request = Request::decode_body(inner, &body[IN_TXN_HEADER..])?;
        Ok(Request::InTxn {
            txn,
            for_update,
            request: Box::new(request),
        })
    }

    fn decode_once(body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(body.get(..ONCE_HEADER).unwrap_or(body));
        let session = r.u64("session")?;
        let seq = r.u64("seq")?;
        let acked_below = r.u64("acked below")?;
        let inner = r.u8("opcode")?;
        r.finish()?;
        let not_carried = || DecodeError::Invalid {
            what: "ONCE",
            detail: format!("it carries PUT, DELETE, CAS or MPUT, not opcode {inner}"),
        };
        // Checked before decoding: a chain of ONCEs must not recurse deep.
        if inner == Opcode::Once as u8 {
            return Err(not_carried());
        }
        let request = Request::decode_body(inner, &body[ONCE_HEADER..])?;
        if !request.may_be_once() {
            return Err(not_carried());
        }
        Ok(Request::Once {
            session,
            seq,
            acked_below,
            request: Box::new(request),
        })
    }
}

impl Response {
    /// Appends this response to the request `(opcode, request_id)` as a frame to `out`.
    pub fn encode(&self, opcode: u8, request_id: u64, out: &mut Vec<u8>) {
        let flags = match self {
            Response::Error { .. } => FLAG_RESPONSE | FLAG_ERROR,
            _ => FLAG_RESPONSE,
        };
        encode_frame(out, opcode, request_id, flags, |out| self.encode_body(out));
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Response::Pong => {}
            Response::Value { version, value } => {
                put_u64(out, *version);
                put_bytes(out, value);
            }
            Response::Written { version } => put_u64(out, *version),
            Response::Deleted { existed } => out.push(u8::from(*existed)),
            Response::Values(values) => {
                put_u32(out, values.len() as u32);
                for value in values {
                    match value {
                        Some((version, value)) => {
                            out.push(1);
                            put_u64(out, *version);
                            put_bytes(out, value);
                        }
                        None => out.push(0),
                    }
                }
            }
            Response::Versions(versions) => {
                put_u32(out, versions.len() as u32);
                for version in versions {
                    put_u64(out, *version);
                }
            }
            Response::Scanned { pairs, next } => {
                put_u32(out, pairs.len() as u32);
                for (key, value) in pairs {
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                match next {
                    Some(next) => {
                        out.push(1);
                        put_bytes(out, next);
                    }
                    None => out.push(0),
                }
            }
            Response::Info(json) | Response::Document(json) => put_bytes(out, json.as_bytes()),
            Response::BackupChunk(chunk) => {
                put_u64(out, chunk.id);
                put_u64(out, chunk.index);
                put_u64(out, chunk.term);
                put_u32(out, chunk.number);
                put_u64(out, chunk.total_pages);
                put_u64(out, chunk.first);
                put_bytes(out, &chunk.meta);
                put_bytes(out, &chunk.pages);
                put_u32(out, chunk.crc);
                out.push(u8::from(chunk.last));
            }
            Response::Began { txn } => put_u64(out, *txn),
            Response::Committed(written) => {
                put_u32(out, written.len() as u32);
                for (key, version) in written {
                    put_bytes(out, key);
                    put_u64(out, *version);
                }
            }
            Response::Ended => {}
            Response::AuthChallenge { salt, cost, nonce } => {
                put_bytes(out, salt);
                put_u32(out, cost.memory_kib);
                put_u32(out, cost.passes);
                put_u32(out, cost.lanes);
                put_bytes(out, nonce);
            }
            Response::Authenticated { role, signature } => {
                out.push(*role as u8);
                put_bytes(out, signature);
            }
            Response::Error { code, message } => {
                out.extend_from_slice(&(*code as u16).to_le_bytes());
                put_bytes(out, message.as_bytes());
            }
        }
    }

    /// Decodes a response body given its frame header.
    pub fn decode(header: &Header, body: &[u8]) -> Result<Response, DecodeError> {
        let mut r = Reader::new(body);
        if header.flags & FLAG_ERROR != 0 {
            let code_bytes = r.take(2, "error code")?;
            let code = ErrorCode::from_u16(u16::from_le_bytes([code_bytes[0], code_bytes[1]]));
            let message = r.bytes("error message", ERROR_MESSAGE_SIZE_MAX)?;
            r.finish()?;
            return Ok(Response::Error {
                code,
                message: String::from_utf8_lossy(&message).into(),
            });
        }
        let opcode =
            Opcode::from_u8(header.opcode).ok_or(DecodeError::UnknownOpcode(header.opcode))?;
        let response = match opcode {
            Opcode::Once | Opcode::InTxn => {
                return Err(DecodeError::Invalid {
                    what: "reply opcode",
                    detail: "ONCE and IN_TXN are answered with the inner request's opcode".into(),
                })
            }
            Opcode::Begin => Response::Began {
                txn: r.u64("transaction")?,
            },
            Opcode::Commit => {
                let count = r.count("written count", BATCH_COUNT_MAX)?;
                let mut written = Vec::with_capacity(count);
                for _ in 0..count {
                    written.push((r.bytes("key", KEY_SIZE_MAX)?, r.u64("version")?));
                }
                Response::Committed(written)
            }
            Opcode::Rollback => Response::Ended,
            Opcode::AuthStart => Response::AuthChallenge {
                salt: r.bytes("salt", AUTH_FIELD_SIZE_MAX)?,
                cost: Cost {
                    memory_kib: r.u32("argon2 memory")?,
                    passes: r.u32("argon2 passes")?,
                    lanes: r.u32("argon2 lanes")?,
                },
                nonce: r.bytes("nonce", AUTH_FIELD_SIZE_MAX)?,
            },
            Opcode::AuthFinish => Response::Authenticated {
                role: Role::from_u8(r.u8("role")?).ok_or(DecodeError::Invalid {
                    what: "role",
                    detail: "not 1 (read), 2 (readwrite) or 3 (admin)".into(),
                })?,
                signature: r.bytes("signature", AUTH_FIELD_SIZE_MAX)?,
            },
            Opcode::Ping => Response::Pong,
            Opcode::Get | Opcode::GetStale => Response::Value {
                version: r.u64("version")?,
                value: r.bytes("value", VALUE_SIZE_MAX)?,
            },
            Opcode::Put | Opcode::Cas | Opcode::TransferLeader => Response::Written {
                version: r.u64("version")?,
            },
            Opcode::Delete => Response::Deleted {
                existed: r.flag("existed")?,
            },
            Opcode::MGet => {
                let count = r.count("value count", BATCH_COUNT_MAX)?;
                let mut values = Vec::with_capacity(count);
                for _ in 0..count {
                    values.push(if r.flag("value present")? {
                        Some((r.u64("version")?, r.bytes("value", VALUE_SIZE_MAX)?))
                    } else {
                        None
                    });
                }
                Response::Values(values)
            }
            Opcode::MPut => {
                let count = r.count("version count", BATCH_COUNT_MAX)?;
                let mut versions = Vec::with_capacity(count);
                for _ in 0..count {
                    versions.push(r.u64("version")?);
                }
                Response::Versions(versions)
            }
            Opcode::Scan => {
                let count = r.count("pair count", SCAN_LIMIT_MAX as usize)?;
                let mut pairs = Vec::with_capacity(count);
                for _ in 0..count {
                    pairs.push((
                        r.bytes("key", KEY_SIZE_MAX)?,
                        r.bytes("value", VALUE_SIZE_MAX)?,
                    ));
                }
                let next = if r.flag("next present")? {
                    Some(r.bytes("next", KEY_SIZE_MAX + 1)?)
                } else {
                    None
                };
                Response::Scanned { pairs, next }
            }
            Opcode::Info => {
                let json = r.bytes("info", crate::limits::FRAME_BODY_SIZE_MAX)?;
                Response::Info(String::from_utf8(json).map_err(|e| DecodeError::Invalid {
                    what: "info",
                    detail: e.to_string(),
                })?)
            }
            Opcode::Backup => Response::BackupChunk(BackupChunk {
                id: r.u64("backup id")?,
                index: r.u64("index")?,
                term: r.u64("term")?,
                number: r.u32("chunk number")?,
                total_pages: r.u64("total pages")?,
                first: r.u64("first page")?,
                meta: r.bytes("meta page", 4096)?,
                pages: r.bytes("pages", BACKUP_CHUNK_BYTES_MAX)?,
                crc: r.u32("crc")?,
                last: r.flag("last")?,
            }),
            Opcode::Document => {
                let json = r.bytes("document reply", DOCUMENT_SIZE_MAX)?;
                Response::Document(String::from_utf8(json).map_err(|e| DecodeError::Invalid {
                    what: "document reply",
                    detail: e.to_string(),
                })?)
            }
        };
        r.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
