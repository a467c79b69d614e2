//! Transactions in the client library (docs/transactions.md): [`Client::begin`] opens one on
//! the client's connection; its requests see its own writes; [`Transaction::commit`] applies
//! everything at once or nothing. [`Client::transact`] runs a closure as a transaction and
//! runs it again when the server aborted it for a reason a retry can cure (TXN_CONFLICT,
//! DEADLOCK).
//!
//! A transaction belongs to the connection it began on: if that connection breaks, the
//! server rolls it back, and later requests for it get TXN_NOT_FOUND.

use crate::client::{Client, ClientError, ScanPage, VersionedValue};
use crate::documents;
use crate::message::{ErrorCode, Isolation, Request, Response};
use serde_json::Value as JsonValue;

/// An open transaction. Dropping it without committing rolls it back.
pub struct Transaction<'a> {
    client: &'a Client,
    id: u64,
    open: bool,
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {response:?}"))
}

/// Whether running the transaction again may succeed: the server aborted it because another
/// transaction or write took its place.
pub fn is_retryable(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::TxnConflict | ErrorCode::Deadlock)
    )
}

impl Client {
    /// Begins a transaction at `isolation`.
    pub fn begin(&self, isolation: Isolation) -> Result<Transaction<'_>, ClientError> {
        match self.call(&Request::Begin { isolation })? {
            Response::Began { txn } => Ok(Transaction {
                client: self,
                id: txn,
                open: true,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `body` in a transaction and commits it; when the server aborts it with
    /// TXN_CONFLICT or DEADLOCK (in `body` or at commit), runs it again, up to `attempts`
    /// times in all. Any other error is returned as it is (the transaction rolled back).
    pub fn transact<T>(
        &self,
        isolation: Isolation,
        attempts: u32,
        mut body: impl FnMut(&Transaction<'_>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.begin(isolation).and_then(|txn| {
                let value = body(&txn)?;
                txn.commit()?;
                Ok(value)
            });
            match outcome {
                Err(e) if is_retryable(&e) && attempt < attempts => {
                    // A short, growing pause lets the transaction that won go first.
                    let pause = std::time::Duration::from_millis(u64::from(attempt.min(10)));
                    std::thread::sleep(pause);
                }
                outcome => return outcome,
            }
        }
    }
}

impl Transaction<'_> {
    /// The transaction's id on the server.
    pub fn id(&self) -> u64 {
        self.id
    }

    fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.call_as(request, false)
    }

    fn call_as(&self, request: Request, for_update: bool) -> Result<Response, ClientError> {
        self.client.call(&Request::InTxn {
            txn: self.id,
            for_update,
            request: Box::new(request),
        })
    }

    /// Like [`Transaction::get_versioned`], locking the key exclusively, for the write that
    /// will follow (`SELECT ... FOR UPDATE`): under contention, read-modify-writes of one key
    /// then wait for each other instead of deadlocking on shared locks.
    pub fn get_for_update(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        match self.call_as(Request::Get { key: key.to_vec() }, true) {
            Ok(Response::Value { version, value }) => Ok(Some((version, value))),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    /// `key`'s version and value as this transaction sees it (version 0 for a value this
    /// transaction wrote).
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        match self.call(Request::Get { key: key.to_vec() }) {
            Ok(Response::Value { version, value }) => Ok(Some((version, value))),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.get_versioned(key)?.map(|(_, value)| value))
    }

    pub fn mget(&self, keys: &[&[u8]]) -> Result<Vec<Option<VersionedValue>>, ClientError> {
        let keys = keys.iter().map(|k| k.to_vec()).collect();
        match self.call(Request::MGet { keys })? {
            Response::Values(values) => Ok(values),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `value` under `key` at commit (the key is locked now).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        match self.call(Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })? {
            Response::Written { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key` at commit; returns whether it exists now.
    pub fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        match self.call(Request::Delete { key: key.to_vec() })? {
            Response::Deleted { existed } => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    /// Writes (or deletes) `key` at commit if its version is `expected_version` now.
    pub fn cas(
        &self,
        key: &[u8],
        expected_version: u64,
        value: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        match self.call(Request::Cas {
            key: key.to_vec(),
            expected_version,
            value: value.map(<[u8]>::to_vec),
        })? {
            Response::Written { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `limit` pairs in `[start, end)` as this transaction sees them.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        match self.call(Request::Scan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit,
        })? {
            Response::Scanned { pairs, next } => Ok((pairs, next)),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a document command (`{"find": "people", ...}`, docs/documents.md) inside the
    /// transaction: its writes are applied at commit, its reads see them.
    pub fn document(&self, command: &JsonValue) -> Result<JsonValue, ClientError> {
        let request = Request::Document {
            command: command.to_string().into_bytes(),
        };
        match self.call(request)? {
            Response::Document(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("document reply is not JSON: {e}"))),
            other => Err(unexpected(other)),
        }
    }

    /// Inserts documents at commit; returns their `_id`s.
    pub fn insert(&self, coll: &str, docs: &[JsonValue]) -> Result<Vec<JsonValue>, ClientError> {
        documents::insert(&|c| self.document(c), coll, docs)
    }

    /// Every document `query` selects as this transaction sees them.
    pub fn find(&self, coll: &str, query: &JsonValue) -> Result<Vec<JsonValue>, ClientError> {
        let mut out = Vec::new();
        documents::find_each(&|c| self.document(c), coll, query, |doc| {
            out.push(doc);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn count(&self, coll: &str, filter: &JsonValue) -> Result<u64, ClientError> {
        documents::count(&|c| self.document(c), coll, filter)
    }

    /// Updates the first (or, with `multi`, every) matching document at commit; the reply
    /// as [`Client::update`]'s.
    pub fn update(
        &self,
        coll: &str,
        filter: &JsonValue,
        update: &JsonValue,
        upsert: bool,
        multi: bool,
    ) -> Result<JsonValue, ClientError> {
        self.document(&documents::update_command(
            coll, filter, update, upsert, multi,
        ))
    }

    pub fn remove(&self, coll: &str, filter: &JsonValue, multi: bool) -> Result<u64, ClientError> {
        documents::remove(&|c| self.document(c), coll, filter, multi)
    }

    pub fn aggregate(
        &self,
        coll: &str,
        pipeline: &JsonValue,
    ) -> Result<Vec<JsonValue>, ClientError> {
        documents::aggregate(&|c| self.document(c), coll, pipeline)
    }

    /// Commits: every write applied on every shard, or (on an error that is not an unknown
    /// outcome) none. Returns each written key's new version (0 for a delete), in key order.
    pub fn commit(mut self) -> Result<Vec<(Vec<u8>, u64)>, ClientError> {
        self.open = false;
        match self.client.call(&Request::Commit { txn: self.id })? {
            Response::Committed(written) => Ok(written),
            other => Err(unexpected(other)),
        }
    }

    /// Rolls back: nothing of it is applied and its locks are released.
    pub fn rollback(mut self) -> Result<(), ClientError> {
        self.open = false;
        match self.client.call(&Request::Rollback { txn: self.id })? {
            Response::Ended => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            // Best effort: the server also rolls back when the connection closes, and a
            // transaction it already aborted answers TXN_NOT_FOUND.
            let _ = self.client.call(&Request::Rollback { txn: self.id });
        }
    }
}
