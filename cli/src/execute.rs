//! Running a command against kvsd: the request it sends, and how the reply (and the pages
//! after it) become results. Every mode runs commands through here, so a command does the
//! same in one-shot, batch and shell mode; only how its results are printed differs.

use std::fmt;
use std::io;

use kvs_wire::limits::SCAN_LIMIT_MAX;
use kvs_wire::{Client, ClientError, ErrorCode, Request, Response};
use serde_json::{json, Value as Json};

use crate::grammar::Command;
use crate::output::Output;

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    /// The key, collection or value it was about does not exist (printed as `(nil)`).
    Missing,
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    Client(ClientError),
    /// The command does not run in this mode.
    Refused(&'static str),
    /// The server did what was asked, but what it was for did not happen in time.
    NotYet(String),
    /// Its results could not be written.
    Output(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Client(e) => e.fmt(f),
            Failure::Refused(why) => f.write_str(why),
            Failure::NotYet(why) => f.write_str(why),
            Failure::Output(e) => write!(f, "writing the output: {e}"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Client(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Output(e)
    }
}

/// How to read a command's reply. Once the request is sent this is all that is left of the
/// command, so batch mode does not hold a large value twice while its reply is awaited.
#[derive(Debug)]
pub enum Reply {
    Pong,
    Info,
    /// `cluster status`: INFO made into the cluster's picture.
    ClusterStatus,
    /// `cluster transfer-leader`: OK once `node` leads `shard`.
    LeaderMoved {
        shard: u32,
        node: u64,
    },
    /// `get`: the value (after its version and a tab, when `version`), or missing.
    Value {
        version: bool,
    },
    /// `put`: OK.
    Written,
    /// `cas`: the new version.
    Version,
    /// `del`: OK, or missing.
    Deleted,
    /// `scan`: pairs, and further pages from where a page ends until `remaining` are read.
    Pairs {
        end: Option<Vec<u8>>,
        remaining: u64,
    },
    /// `find`: documents, and further pages, asked for with this command and a cursor.
    Found {
        command: Json,
    },
    /// `aggregate`: the documents.
    Aggregated,
    /// `insert`: the `_id`s; of `one` document, just its `_id`.
    Inserted {
        one: bool,
    },
    Count,
    /// `index create`: the index's name.
    IndexCreated,
    /// `index drop`: OK.
    IndexDropped,
    Indexes,
    Collections,
    /// `drop`: OK, or missing.
    Dropped,
    /// `update`, `remove`, `explain`: the reply as it is.
    Json,
}

impl Reply {
    /// Whether reading the reply may ask for more pages: batch mode sends nothing after
    /// such a command until it is read, so its later pages never see later writes.
    pub fn reads_pages(&self) -> bool {
        matches!(
            self,
            Reply::Pairs { .. } | Reply::Found { .. } | Reply::LeaderMoved { .. }
        )
    }
}

/// A command made ready to send.
#[derive(Debug)]
pub struct Prepared {
    /// `None` when the server has nothing to say (`scan --limit 0`).
    pub request: Option<Request>,
    pub reply: Reply,
}

/// The request a command sends first, and how to read its reply.
pub fn prepare(command: Command) -> Result<Prepared, Failure> {
    let document = |command: &Json| Request::Document {
        command: command.to_string().into_bytes(),
    };
    let filter = |filter: Option<Json>| filter.unwrap_or_else(|| json!({}));
    let (request, reply) = match command {
        Command::Ping => (Request::Ping, Reply::Pong),
        Command::Info => (Request::Info, Reply::Info),
        Command::ClusterStatus => (Request::Info, Reply::ClusterStatus),
        Command::TransferLeader { shard, node } => (
            Request::TransferLeader { shard, node },
            Reply::LeaderMoved { shard, node },
        ),
        Command::Get {
            key,
            version,
            stale,
        } => (
            if stale {
                Request::GetStale {
                    key: key.into_bytes(),
                }
            } else {
                Request::Get {
                    key: key.into_bytes(),
                }
            },
            Reply::Value { version },
        ),
        Command::Put { key, value } => (
            Request::Put {
                key: key.into_bytes(),
                value: value.into_bytes(),
            },
            Reply::Written,
        ),
        Command::Del { key } => (
            Request::Delete {
                key: key.into_bytes(),
            },
            Reply::Deleted,
        ),
        Command::Cas {
            key,
            version,
            value,
        } => (
            Request::Cas {
                key: key.into_bytes(),
                expected_version: version,
                value: Some(value.into_bytes()),
            },
            Reply::Version,
        ),
        Command::Scan { start, end, limit } => {
            let end = end.map(String::into_bytes);
            let remaining = limit.unwrap_or(u64::MAX);
            let request = (remaining > 0).then(|| Request::Scan {
                start: start.unwrap_or_default().into_bytes(),
                end: end.clone(),
                limit: scan_page(remaining),
            });
            let reply = Reply::Pairs { end, remaining };
            return Ok(Prepared { request, reply });
        }
        Command::Insert { coll, documents } => {
            let documents = match documents {
                Json::Array(documents) => documents,
                document => vec![document],
            };
            let one = documents.len() == 1;
            (
                document(&json!({"insert": coll, "documents": documents})),
                Reply::Inserted { one },
            )
        }
        Command::Find {
            coll,
            filter: find_filter,
            sort,
            skip,
            limit,
            projection,
        } => {
            let mut command = json!({"find": coll, "filter": filter(find_filter)});
            if let Some(sort) = sort {
                command["sort"] = sort;
            }
            if let Some(skip) = skip {
                command["skip"] = json!(skip);
            }
            if let Some(limit) = limit {
                command["limit"] = json!(limit);
            }
            if let Some(projection) = projection {
                command["projection"] = projection;
            }
            (document(&command), Reply::Found { command })
        }
        Command::Update {
            coll,
            filter,
            update,
            upsert,
            many,
        } => (
            document(&json!({
                "update": coll, "filter": filter, "u": update, "upsert": upsert, "multi": many,
            })),
            Reply::Json,
        ),
        Command::Remove { coll, filter, one } => (
            document(&json!({"delete": coll, "filter": filter, "multi": !one})),
            Reply::Json,
        ),
        Command::Count {
            coll,
            filter: count_filter,
        } => (
            document(&json!({"count": coll, "filter": filter(count_filter)})),
            Reply::Count,
        ),
        Command::Aggregate { coll, pipeline } => (
            document(&json!({"aggregate": coll, "pipeline": pipeline})),
            Reply::Aggregated,
        ),
        Command::Explain {
            coll,
            filter: explain_filter,
            sort,
            limit,
        } => {
            let mut command = json!({"explain": coll, "filter": filter(explain_filter)});
            if let Some(sort) = sort {
                command["sort"] = sort;
            }
            if let Some(limit) = limit {
                command["limit"] = json!(limit);
            }
            (document(&command), Reply::Json)
        }
        Command::IndexCreate {
            coll,
            key,
            unique,
            name,
        } => {
            let mut command = json!({"createIndex": coll, "key": key, "unique": unique});
            if let Some(name) = name {
                command["name"] = json!(name);
            }
            (document(&command), Reply::IndexCreated)
        }
        Command::IndexDrop { coll, name } => (
            document(&json!({"dropIndex": coll, "name": name})),
            Reply::IndexDropped,
        ),
        Command::IndexList { coll } => (document(&json!({"listIndexes": coll})), Reply::Indexes),
        Command::Collections => (document(&json!({"listCollections": 1})), Reply::Collections),
        Command::Drop { coll } => (document(&json!({"drop": coll})), Reply::Dropped),
        Command::Verify { .. } => {
            return Err(Failure::Refused(
                "verify checks a stopped node's files: run `kvs verify` alone",
            ))
        }
        Command::Dump { .. } | Command::Load { .. } => {
            return Err(Failure::Refused(
                "dump and load stream whole files: run `kvs dump` or `kvs load` alone",
            ))
        }
        Command::Backup { .. } | Command::BackupVerify { .. } => {
            return Err(Failure::Refused(
                "backups stream whole files: run `kvs backup` alone",
            ))
        }
        Command::Txn { .. } => {
            return Err(Failure::Refused(
                "a transaction reads its commands from stdin: run `kvs txn` alone",
            ))
        }
        Command::UserAdd { .. } | Command::UserRemove { .. } => {
            return Err(Failure::Refused(
                "users are written to kvsd's users file: run `kvs user add` alone",
            ))
        }
    };
    Ok(Prepared {
        request: Some(request),
        reply,
    })
}

/// How long `cluster transfer-leader` waits for the leadership to move.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the node `client` asks says `node` leads `shard` (the leader hands over
/// once `node` has caught up and is heard from, checked every 2 s).
fn wait_for_leader(client: &Client, shard: u32, node: u64) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut leader = None;
    while started.elapsed() < TRANSFER_WAIT {
        if let Response::Info(info) = client.call(&Request::Info)? {
            leader = crate::cluster::leader_of(&info, shard);
            if leader == Some(node) {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(Failure::NotYet(format!(
        "node {node} is now shard {shard}'s preferred leader, but after {} s the shard is led \
         by {}: leadership moves once node {node} has caught up and is reachable",
        TRANSFER_WAIT.as_secs(),
        leader.map_or("no node".to_string(), |l| format!("node {l}"))
    )))
}

/// Sends a command, waits for its reply and hands its results to `out`.
pub fn run(client: &Client, command: Command, out: &mut dyn Output) -> Result<Status, Failure> {
    let Prepared { request, reply } = prepare(command)?;
    let response = request.map(|request| client.call(&request));
    finish(client, reply, response, out)
}

/// Reads the reply `response` (`None` when no request was needed) as `reply` says, asks
/// for the pages after it, and hands the results to `out`.
pub fn finish(
    client: &Client,
    reply: Reply,
    response: Option<Result<Response, ClientError>>,
    out: &mut dyn Output,
) -> Result<Status, Failure> {
    let Some(response) = response else {
        // Only a scan for no pairs sends nothing.
        out.begin_list()?;
        return Ok(Status::Done);
    };
    match reply {
        Reply::Value {
            version: with_version,
        } => match response {
            Ok(Response::Value { value, version }) if with_version => {
                let mut line = format!("{version}\t").into_bytes();
                line.extend_from_slice(&value);
                out.value(&line)?
            }
            Ok(Response::Value { value, .. }) => out.value(&value)?,
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => return Ok(Status::Missing),
            other => return Err(unexpected(other?)),
        },
        Reply::Pong => match response? {
            Response::Pong => out.line("PONG")?,
            other => return Err(unexpected(other)),
        },
        Reply::Info => match response? {
            Response::Info(info) => out.line(&info.replace('\n', " "))?,
            other => return Err(unexpected(other)),
        },
        Reply::ClusterStatus => match response? {
            Response::Info(info) => {
                let status = crate::cluster::status_from_info(&info)
                    .map_err(|e| Failure::Client(ClientError::Protocol(e)))?;
                out.line(&status)?
            }
            other => return Err(unexpected(other)),
        },
        Reply::Written => match response? {
            Response::Written { .. } => out.line("OK")?,
            other => return Err(unexpected(other)),
        },
        Reply::LeaderMoved { shard, node } => match response? {
            Response::Written { .. } => {
                wait_for_leader(client, shard, node)?;
                out.line("OK")?
            }
            other => return Err(unexpected(other)),
        },
        Reply::Version => match response? {
            Response::Written { version } => out.line(&version.to_string())?,
            other => return Err(unexpected(other)),
        },
        Reply::Deleted => match response? {
            Response::Deleted { existed: true } => out.line("OK")?,
            Response::Deleted { existed: false } => return Ok(Status::Missing),
            other => return Err(unexpected(other)),
        },
        Reply::Pairs { end, remaining } => scan_pages(client, response, end, remaining, out)?,
        Reply::Found { command } => find_pages(client, response, command, out)?,
        document_reply => return finish_document(document_reply, parse(response)?, out),
    }
    Ok(Status::Done)
}

/// The pairs of a scan, page after page until `remaining` are read or there are no more.
fn scan_pages(
    client: &Client,
    mut response: Result<Response, ClientError>,
    end: Option<Vec<u8>>,
    mut remaining: u64,
    out: &mut dyn Output,
) -> Result<(), Failure> {
    out.begin_list()?;
    loop {
        let (pairs, next) = match response? {
            Response::Scanned { pairs, next } => (pairs, next),
            other => return Err(unexpected(other)),
        };
        for (key, value) in &pairs {
            out.pair(key, value)?;
        }
        remaining = remaining.saturating_sub(pairs.len() as u64);
        match next {
            Some(start) if remaining > 0 && !pairs.is_empty() => {
                response = client.call(&Request::Scan {
                    start,
                    end: end.clone(),
                    limit: scan_page(remaining),
                })
            }
            _ => return Ok(()),
        }
    }
}

/// The pairs one SCAN request asks for when `remaining` are wanted.
fn scan_page(remaining: u64) -> u32 {
    remaining.min(u64::from(SCAN_LIMIT_MAX)) as u32
}

/// The documents of a find, page after page while the reply holds a cursor.
fn find_pages(
    client: &Client,
    response: Result<Response, ClientError>,
    mut command: Json,
    out: &mut dyn Output,
) -> Result<(), Failure> {
    out.begin_list()?;
    let mut reply = parse(response)?;
    loop {
        match reply["documents"].take() {
            Json::Array(documents) => {
                for document in documents {
                    out.item(document)?;
                }
            }
            _ => return Err(ClientError::Protocol(format!("find reply {reply}")).into()),
        }
        match reply.get("cursor") {
            Some(cursor) if !cursor.is_null() => {
                command["cursor"] = cursor.clone();
                reply = client.document(&command)?;
            }
            _ => return Ok(()),
        }
    }
}

/// The results of a document command's reply.
pub fn finish_document(
    reply: Reply,
    mut body: Json,
    out: &mut dyn Output,
) -> Result<Status, Failure> {
    match reply {
        Reply::Aggregated => list(&mut body, "documents", out)?,
        Reply::Indexes => list(&mut body, "indexes", out)?,
        Reply::Inserted { one } => match body["insertedIds"].take() {
            Json::Array(ids) if one && ids.len() == 1 => out.line(&ids[0].to_string())?,
            Json::Array(ids) => {
                out.begin_list()?;
                ids.into_iter().try_for_each(|id| out.item(id))?;
            }
            _ => return Err(ClientError::Protocol(format!("insert reply {body}")).into()),
        },
        Reply::Count => out.line(&body["count"].to_string())?,
        Reply::IndexCreated => out.line(body["name"].as_str().unwrap_or_default())?,
        Reply::IndexDropped => out.line("OK")?,
        Reply::Collections => {
            out.begin_list()?;
            if let Json::Array(names) = body["collections"].take() {
                for name in &names {
                    out.name(name.as_str().unwrap_or_default())?;
                }
            }
        }
        Reply::Dropped if body["dropped"].as_bool() == Some(true) => out.line("OK")?,
        Reply::Dropped => return Ok(Status::Missing),
        _ => out.line(&body.to_string())?,
    }
    Ok(Status::Done)
}

/// The reply's array `field` as a list; the reply itself when it has none.
fn list(body: &mut Json, field: &str, out: &mut dyn Output) -> io::Result<()> {
    match body[field].take() {
        Json::Array(items) => {
            out.begin_list()?;
            items.into_iter().try_for_each(|item| out.item(item))
        }
        _ => out.line(&body.to_string()),
    }
}

/// A document command's reply as JSON.
fn parse(response: Result<Response, ClientError>) -> Result<Json, Failure> {
    match response? {
        Response::Document(text) => serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("document reply is not JSON: {e}")).into()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> Failure {
    ClientError::Protocol(format!("unexpected reply {response:?}")).into()
}
