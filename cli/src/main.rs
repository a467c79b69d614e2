//! `kvs`: the command-line client for kvsd.
//!
//! Three modes: a one-shot command (`kvs get KEY`), a batch mode when there is no command and
//! stdin is not a terminal (one command a line, many requests in flight, one result line per
//! command in input order), and an interactive shell with history when stdin is a terminal.
//!
//! Document commands (`insert`, `find`, `update`, ...) take JSON arguments. In batch and
//! shell mode a JSON argument may contain spaces: a line is split into words and whole
//! JSON values, and each command's result is one line (`find` and `aggregate`: a JSON
//! array of the documents).

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvs_wire::client::Pending;
use kvs_wire::limits::SCAN_LIMIT_MAX;
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode, Request, Response};

/// Requests the batch mode keeps in flight at most.
const BATCH_IN_FLIGHT_MAX: usize = 4096;
/// Requests the batch mode sends in one write at most.
const BATCH_WRITE_COUNT_MAX: usize = 256;
/// Pairs one SCAN line of batch or shell mode asks for unless told otherwise.
const SCAN_LIMIT_DEFAULT: u32 = 100;

#[derive(Parser)]
#[command(name = "kvs", version, about = "Command-line client for kvsd")]
struct Cli {
    /// Address of kvsd.
    #[arg(long, default_value = "127.0.0.1:7070", global = true)]
    addr: String,
    /// Seconds to wait for a reply.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
enum Command {
    /// Checks the server answers.
    Ping,
    /// Prints the value of KEY (exit code 1 when it does not exist).
    Get { key: String },
    /// Stores VALUE under KEY; prints OK once the write is durable.
    Put { key: String, value: String },
    /// Deletes KEY (exit code 1 when it did not exist).
    Del { key: String },
    /// Writes VALUE only if KEY's version is VERSION (0: KEY must not exist); prints the new version.
    Cas {
        key: String,
        version: u64,
        value: String,
    },
    /// Lists pairs in key order, one KEY<TAB>VALUE line each.
    Scan {
        /// First key (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// End key (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// Most pairs to print (all when absent).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Prints server information as JSON.
    Info,
    /// Inserts a document, or an array of documents, into COLL; prints each `_id`.
    Insert { coll: String, json: String },
    /// Prints the documents of COLL that FILTER matches, one JSON document per line.
    Find {
        coll: String,
        filter: Option<String>,
        /// Sort document, such as '{"name": 1}'.
        #[arg(long)]
        sort: Option<String>,
        #[arg(long)]
        skip: Option<u64>,
        #[arg(long)]
        limit: Option<u64>,
        /// Projection document, such as '{"name": 1, "_id": 0}'.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Updates the first document FILTER matches (every one with --many); prints the counts.
    Update {
        coll: String,
        filter: String,
        update: String,
        /// Insert a document when none matches.
        #[arg(long)]
        upsert: bool,
        #[arg(long)]
        many: bool,
    },
    /// Removes the documents FILTER matches (only the first with --one); prints the count.
    Remove {
        coll: String,
        filter: String,
        #[arg(long)]
        one: bool,
    },
    /// Prints how many documents of COLL FILTER matches.
    Count {
        coll: String,
        filter: Option<String>,
    },
    /// Runs an aggregation PIPELINE (a JSON array); prints one document per line.
    Aggregate { coll: String, pipeline: String },
    /// Creates, drops or lists indexes.
    #[command(subcommand)]
    Index(IndexAction),
    /// Prints how each shard would run a query, and what it examined.
    Explain {
        coll: String,
        filter: Option<String>,
        #[arg(long)]
        sort: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Lists the collections.
    Collections,
    /// Drops COLL with its documents and indexes.
    Drop { coll: String },
    /// Checks a stopped node's data directory (pages, tree, free list, and documents
    /// against their indexes) by running `kvsd --verify`; exit 0 clean, 1 problems found.
    Verify {
        #[arg(long, default_value = "./kvs-data")]
        data_dir: String,
    },
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
enum IndexAction {
    /// Creates an index on KEY (a field, 'a,-b' for a compound one with b descending, or a
    /// JSON key document) and waits until it is built; prints its name.
    Create {
        coll: String,
        #[arg(allow_hyphen_values = true)]
        key: String,
        #[arg(long)]
        unique: bool,
        #[arg(long)]
        name: Option<String>,
    },
    /// Drops the index NAME of COLL.
    Drop { coll: String, name: String },
    /// Lists the indexes of COLL, one JSON document per line.
    List { coll: String },
}

/// The command names that take JSON arguments.
const DOCUMENT_COMMANDS: &[&str] = &[
    "insert",
    "find",
    "update",
    "remove",
    "count",
    "aggregate",
    "index",
    "explain",
    "collections",
    "drop",
];

/// Splits a line into words and whole JSON values (objects, arrays and strings may hold
/// spaces).
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if rest.starts_with(['{', '[', '"']) {
            let mut values =
                serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
            match values.next() {
                Some(Ok(value)) => {
                    let end = values.byte_offset();
                    // A quoted word is its text (`drop "my coll"`); objects and arrays
                    // stay JSON text.
                    tokens.push(match value {
                        serde_json::Value::String(text) => text,
                        _ => rest[..end].to_string(),
                    });
                    rest = rest[end..].trim_start();
                }
                Some(Err(e)) => return Err(format!("malformed JSON: {e}")),
                None => break,
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            tokens.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    Ok(tokens)
}

/// Parses a JSON argument.
fn json_arg(what: &str, text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

/// An index key argument: a JSON document, or fields separated by commas ('-' before a
/// field: descending).
fn index_key(text: &str) -> Result<serde_json::Value, String> {
    if text.trim_start().starts_with('{') {
        return json_arg("the index key", text);
    }
    let mut key = serde_json::Map::new();
    for field in text.split(',').map(str::trim) {
        let (name, direction) = match field.strip_prefix('-') {
            Some(name) => (name, -1),
            None => (field.strip_prefix('+').unwrap_or(field), 1),
        };
        if name.is_empty() {
            return Err(format!("bad index key {text:?}"));
        }
        key.insert(name.to_string(), serde_json::json!(direction));
    }
    Ok(serde_json::Value::Object(key))
}

impl Command {
    /// Parses one line of batch or shell input. The last argument is the rest of the line, so
    /// values may contain spaces.
    fn parse_line(line: &str) -> Result<Command, String> {
        let line = line.trim_start();
        let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let one_arg = |rest: &str, usage: &str| {
            let arg = rest.trim_end_matches(['\r', '\n']);
            if arg.is_empty() {
                Err(format!("usage: {usage}"))
            } else {
                Ok(arg.to_string())
            }
        };
        let key_and_rest = |rest: &str, usage: &str| {
            let rest = rest.trim_start();
            match rest.split_once(char::is_whitespace) {
                Some((key, value)) if !key.is_empty() => Ok((
                    key.to_string(),
                    value.trim_end_matches(['\r', '\n']).to_string(),
                )),
                _ => Err(format!("usage: {usage}")),
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "ping" => Ok(Command::Ping),
            "info" => Ok(Command::Info),
            "get" => Ok(Command::Get {
                key: one_arg(rest.trim(), "get KEY")?,
            }),
            "del" => Ok(Command::Del {
                key: one_arg(rest.trim(), "del KEY")?,
            }),
            "put" => {
                let (key, value) = key_and_rest(rest, "put KEY VALUE")?;
                Ok(Command::Put { key, value })
            }
            "cas" => {
                let usage = "cas KEY VERSION VALUE";
                let (key, rest) = key_and_rest(rest, usage)?;
                let (version, value) = key_and_rest(&rest, usage)?;
                let version = version
                    .parse()
                    .map_err(|_| format!("bad version {version:?}"))?;
                Ok(Command::Cas {
                    key,
                    version,
                    value,
                })
            }
            "scan" => {
                let mut words = rest.split_whitespace();
                let (mut start, mut end, mut limit) = (None, None, None);
                while let Some(flag) = words.next() {
                    let value = words.next().ok_or(format!("{flag} needs a value"))?;
                    match flag {
                        "--start" => start = Some(value.to_string()),
                        "--end" => end = Some(value.to_string()),
                        "--limit" => {
                            limit = Some(value.parse().map_err(|_| format!("bad limit {value:?}"))?)
                        }
                        other => return Err(format!("unknown scan option {other}")),
                    }
                }
                Ok(Command::Scan { start, end, limit })
            }
            name if DOCUMENT_COMMANDS.contains(&name) => {
                let mut argv = vec!["kvs".to_string()];
                argv.extend(tokenize(line)?);
                argv[1] = name.to_string();
                match Cli::try_parse_from(argv) {
                    Ok(Cli {
                        command: Some(command),
                        ..
                    }) => Ok(command),
                    Ok(_) => Err("empty command".into()),
                    Err(e) => Err(e
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or("bad command")
                        .trim_start_matches("error: ")
                        .to_string()),
                }
            }
            "" => Err("empty command".into()),
            other => Err(format!("unknown command {other:?}")),
        }
    }

    /// The document command (JSON) this command runs, if it is one.
    fn document(&self) -> Result<Option<serde_json::Value>, String> {
        use serde_json::json;
        let optional = |what: &str, text: &Option<String>| match text {
            Some(text) => json_arg(what, text),
            None => Ok(json!({})),
        };
        Ok(Some(match self {
            Command::Insert { coll, json } => {
                let docs = match json_arg("the document", json)? {
                    serde_json::Value::Array(docs) => docs,
                    doc => vec![doc],
                };
                json!({"insert": coll, "documents": docs})
            }
            Command::Find {
                coll,
                filter,
                sort,
                skip,
                limit,
                projection,
            } => {
                let mut command = json!({"find": coll, "filter": optional("the filter", filter)?});
                if let Some(sort) = sort {
                    command["sort"] = json_arg("the sort", sort)?;
                }
                if let Some(skip) = skip {
                    command["skip"] = json!(skip);
                }
                if let Some(limit) = limit {
                    command["limit"] = json!(limit);
                }
                if let Some(projection) = projection {
                    command["projection"] = json_arg("the projection", projection)?;
                }
                command
            }
            Command::Update {
                coll,
                filter,
                update,
                upsert,
                many,
            } => json!({
                "update": coll,
                "filter": json_arg("the filter", filter)?,
                "u": json_arg("the update", update)?,
                "upsert": upsert,
                "multi": many,
            }),
            Command::Remove { coll, filter, one } => json!({
                "delete": coll, "filter": json_arg("the filter", filter)?, "multi": !one
            }),
            Command::Count { coll, filter } => {
                json!({"count": coll, "filter": optional("the filter", filter)?})
            }
            Command::Aggregate { coll, pipeline } => {
                json!({"aggregate": coll, "pipeline": json_arg("the pipeline", pipeline)?})
            }
            Command::Explain {
                coll,
                filter,
                sort,
                limit,
            } => {
                let mut command =
                    json!({"explain": coll, "filter": optional("the filter", filter)?});
                if let Some(sort) = sort {
                    command["sort"] = json_arg("the sort", sort)?;
                }
                if let Some(limit) = limit {
                    command["limit"] = json!(limit);
                }
                command
            }
            Command::Index(IndexAction::Create {
                coll,
                key,
                unique,
                name,
            }) => {
                let mut command =
                    json!({"createIndex": coll, "key": index_key(key)?, "unique": unique});
                if let Some(name) = name {
                    command["name"] = json!(name);
                }
                command
            }
            Command::Index(IndexAction::Drop { coll, name }) => {
                json!({"dropIndex": coll, "name": name})
            }
            Command::Index(IndexAction::List { coll }) => json!({"listIndexes": coll}),
            Command::Collections => json!({"listCollections": 1}),
            Command::Drop { coll } => json!({"drop": coll}),
            _ => return Ok(None),
        }))
    }

    /// The single request this command sends in batch or shell mode.
    fn request(&self) -> Result<Request, String> {
        if let Some(command) = self.document()? {
            return Ok(Request::Document {
                command: command.to_string().into_bytes(),
            });
        }
        Ok(match self.clone() {
            Command::Ping => Request::Ping,
            Command::Info => Request::Info,
            Command::Get { key } => Request::Get {
                key: key.into_bytes(),
            },
            Command::Del { key } => Request::Delete {
                key: key.into_bytes(),
            },
            Command::Put { key, value } => Request::Put {
                key: key.into_bytes(),
                value: value.into_bytes(),
            },
            Command::Cas {
                key,
                version,
                value,
            } => Request::Cas {
                key: key.into_bytes(),
                expected_version: version,
                value: Some(value.into_bytes()),
            },
            Command::Scan { start, end, limit } => {
                let limit = limit.unwrap_or(u64::from(SCAN_LIMIT_DEFAULT));
                if limit == 0 || limit > u64::from(SCAN_LIMIT_MAX) {
                    return Err(format!("scan limit must be in 1..={SCAN_LIMIT_MAX}"));
                }
                Request::Scan {
                    start: start.unwrap_or_default().into_bytes(),
                    end: end.map(String::into_bytes),
                    limit: limit as u32,
                }
            }
            Command::Verify { .. } => {
                return Err("verify checks a stopped node's files: run `kvs verify` alone".into())
            }
            _ => unreachable!("document commands are handled above"),
        })
    }
}

/// The lines a document command's reply prints. `batch`: one line in all (a JSON array
/// where one-shot mode prints one line per document). A find reply with a cursor reads
/// the following pages first.
fn document_lines(
    client: &Client,
    command: &serde_json::Value,
    reply: serde_json::Value,
    batch: bool,
) -> Result<Vec<String>, ClientError> {
    use serde_json::Value as J;
    let name = command
        .as_object()
        .and_then(|o| o.keys().next())
        .map_or("", String::as_str);
    let lines_of = |items: Vec<J>| -> Vec<String> {
        if batch {
            vec![J::Array(items).to_string()]
        } else {
            items.iter().map(J::to_string).collect()
        }
    };
    // The reply's array `field`, as `lines_of` prints it; the reply itself when it has none.
    let array_lines = |mut reply: J, field: &str| match reply[field].take() {
        J::Array(items) => lines_of(items),
        _ => vec![reply.to_string()],
    };
    Ok(match name {
        "find" => {
            let mut docs = Vec::new();
            let mut reply = reply;
            let mut command = command.clone();
            loop {
                if let J::Array(page) = reply["documents"].take() {
                    docs.extend(page);
                }
                match reply.get("cursor") {
                    Some(cursor) if !cursor.is_null() => {
                        command["cursor"] = cursor.clone();
                        reply = client.document(&command)?;
                    }
                    _ => break,
                }
            }
            lines_of(docs)
        }
        "aggregate" => array_lines(reply, "documents"),
        "insert" => {
            let ids = reply["insertedIds"].as_array().cloned().unwrap_or_default();
            if batch
                && command["documents"]
                    .as_array()
                    .is_some_and(|d| d.len() == 1)
            {
                ids.iter().map(J::to_string).collect()
            } else {
                lines_of(ids)
            }
        }
        "count" => vec![reply["count"].to_string()],
        "createIndex" => vec![reply["name"].as_str().unwrap_or_default().to_string()],
        "dropIndex" => vec!["OK".to_string()],
        "listIndexes" => array_lines(reply, "indexes"),
        "listCollections" => {
            let names = reply["collections"].as_array().cloned().unwrap_or_default();
            if batch {
                vec![J::Array(names).to_string()]
            } else {
                names
                    .iter()
                    .map(|n| n.as_str().unwrap_or_default().to_string())
                    .collect()
            }
        }
        "drop" => vec![if reply["dropped"].as_bool() == Some(true) {
            "OK".to_string()
        } else {
            "(nil)".to_string()
        }],
        _ => vec![reply.to_string()],
    })
}

/// The result line of a document command in batch mode.
fn document_result_line(
    client: &Client,
    command: &serde_json::Value,
    result: Result<Response, ClientError>,
) -> String {
    let reply = match result {
        Ok(Response::Document(text)) => match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(e) => return format!("ERR reply is not JSON: {e}"),
        },
        other => return result_line(other),
    };
    match document_lines(client, command, reply, true) {
        Ok(lines) => lines.join(" "),
        Err(e) => result_line(Err(e)),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one-line result of a command in batch mode.
fn result_line(result: Result<Response, ClientError>) -> String {
    match result {
        Ok(Response::Pong) => "PONG".into(),
        Ok(Response::Written { .. }) => "OK".into(),
        Ok(Response::Deleted { existed: true }) => "OK".into(),
        Ok(Response::Deleted { existed: false }) => "(nil)".into(),
        Ok(Response::Value { value, .. }) => text(&value),
        Ok(Response::Info(json)) => json.replace('\n', " "),
        Ok(Response::Scanned { pairs, .. }) => {
            let pairs: Vec<_> = pairs.iter().map(|(k, v)| vec![text(k), text(v)]).collect();
            serde_json::to_string(&pairs).unwrap_or_else(|e| format!("ERR {e}"))
        }
        Ok(other) => format!("ERR unexpected reply {other:?}"),
        Err(ClientError::Server {
            code: ErrorCode::NotFound,
            ..
        }) => "(nil)".into(),
        Err(e) => format!("ERR {}", e.to_string().replace('\n', " ")),
    }
}

enum Slot {
    Ready(String),
    /// A reply to come; for a document command, the command (a find may read more pages),
    /// and whom to tell once its line is printed (the reader waits after a find).
    Waiting(Pending, Option<serde_json::Value>, Option<SyncSender<()>>),
}

/// Batch mode: reads commands from stdin, keeps many in flight, prints results in order.
fn run_batch(client: &Client) -> ExitCode {
    std::thread::scope(|scope| run_batch_in(client, scope))
}

fn run_batch_in<'s>(client: &'s Client, scope: &'s std::thread::Scope<'s, '_>) -> ExitCode {
    let (slots, receiver) = sync_channel::<Slot>(BATCH_IN_FLIGHT_MAX);
    let printer = scope.spawn(move || print_results(receiver, client));
    let mut input = BufReader::with_capacity(256 * 1024, std::io::stdin().lock());
    let mut line = String::new();
    let mut requests = Vec::with_capacity(BATCH_WRITE_COUNT_MAX);
    // Where each request's result goes among the lines read since the last send.
    let mut order: Vec<Option<String>> = Vec::with_capacity(BATCH_WRITE_COUNT_MAX);
    let mut documents: Vec<Option<serde_json::Value>> = Vec::with_capacity(BATCH_WRITE_COUNT_MAX);
    // A find whose result spans pages reads its later pages after its first: the lines
    // after it wait until it is printed, so it never sees their writes.
    let (printed_find, find_done) = sync_channel::<()>(1);
    let mut after_find = false;
    let mut input_error = None;
    loop {
        line.clear();
        let read = input.read_line(&mut line);
        let at_end = match read {
            Ok(0) => true,
            Ok(_) => {
                if !line.trim().is_empty() {
                    let parsed =
                        Command::parse_line(&line).and_then(|c| Ok((c.request()?, c.document()?)));
                    match parsed {
                        Ok((request, document)) => {
                            after_find = document.as_ref().is_some_and(|d| d.get("find").is_some());
                            requests.push(request);
                            documents.push(document);
                            order.push(None);
                        }
                        Err(message) => order.push(Some(format!("ERR {message}"))),
                    }
                }
                false
            }
            Err(e) => {
                input_error = Some(e);
                true
            }
        };
        // Send what was gathered when input has no whole line waiting, or enough is gathered.
        let more_waiting = input.buffer().contains(&b'\n');
        if at_end || !more_waiting || after_find || order.len() >= BATCH_WRITE_COUNT_MAX {
            let mut pendings = match client.submit_many(&requests) {
                Ok(pendings) => pendings.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => requests.iter().map(|_| Err(e.to_string())).collect(),
            }
            .into_iter();
            let mut commands = documents.drain(..);
            let last = order.len().saturating_sub(1);
            for (at, slot) in order.drain(..).enumerate() {
                // Only a find just read can be the last slot with `after_find` set.
                let notify = (after_find && at == last).then(|| printed_find.clone());
                let slot = match slot {
                    Some(line) => Slot::Ready(line),
                    None => match (pendings.next(), commands.next().flatten()) {
                        (Some(Ok(pending)), command) => Slot::Waiting(pending, command, notify),
                        (Some(Err(e)), _) => Slot::Ready(format!("ERR {e}")),
                        (None, _) => unreachable!("one pending per request"),
                    },
                };
                if slots.send(slot).is_err() {
                    return ExitCode::FAILURE; // the printer died: stdout is gone
                }
            }
            requests.clear();
            if after_find {
                // Nothing more is sent until the find's last page is in.
                if find_done.recv().is_err() {
                    return ExitCode::FAILURE;
                }
                after_find = false;
            }
        }
        if at_end {
            break;
        }
    }
    drop(slots);
    let printed = printer.join().unwrap_or(false);
    if let Some(e) = input_error {
        eprintln!("kvs: reading stdin: {e}");
        return ExitCode::from(2);
    }
    if printed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints each result as soon as it and all before it are known; flushes whenever the next
/// result is not ready yet, so a reader sees every line without delay.
fn print_results(slots: Receiver<Slot>, client: &Client) -> bool {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    loop {
        let slot = match slots.try_recv() {
            Ok(slot) => slot,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    return false;
                }
                match slots.recv() {
                    Ok(slot) => slot,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let line = match slot {
            Slot::Ready(line) => line,
            Slot::Waiting(mut pending, command, notify) => {
                let result = match pending.try_wait() {
                    Some(result) => result,
                    None => {
                        if out.flush().is_err() {
                            return false;
                        }
                        pending.wait()
                    }
                };
                let line = match &command {
                    Some(command) => document_result_line(client, command, result),
                    None => result_line(result),
                };
                if let Some(notify) = notify {
                    // All its pages are read: the reader may send the lines after it.
                    let _ = notify.send(());
                }
                line
            }
        };
        if writeln!(out, "{line}").is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

/// Runs one command the way the one-shot mode prints it.
fn run_one(client: &Client, command: &Command, out: &mut impl Write) -> Result<bool, ClientError> {
    let write_error = |e: std::io::Error| ClientError::Disconnected(format!("stdout: {e}"));
    match command {
        Command::Get { key } => match client.get(key.as_bytes())? {
            Some(value) => {
                out.write_all(&value).map_err(write_error)?;
                writeln!(out).map_err(write_error)?;
                Ok(true)
            }
            None => Ok(false),
        },
        Command::Del { key } => {
            let existed = client.delete(key.as_bytes())?;
            if existed {
                writeln!(out, "OK").map_err(write_error)?;
            }
            Ok(existed)
        }
        Command::Cas {
            key,
            version,
            value,
        } => {
            let version = client.cas(key.as_bytes(), *version, Some(value.as_bytes()))?;
            writeln!(out, "{version}").map_err(write_error)?;
            Ok(true)
        }
        Command::Scan { start, end, limit } => {
            let mut remaining = limit.unwrap_or(u64::MAX);
            let mut next = start.clone().unwrap_or_default().into_bytes();
            while remaining > 0 {
                let page = remaining.min(u64::from(SCAN_LIMIT_MAX)) as u32;
                let (pairs, more) = client.scan(&next, end.as_ref().map(|e| e.as_bytes()), page)?;
                for (key, value) in &pairs {
                    out.write_all(key).map_err(write_error)?;
                    out.write_all(b"\t").map_err(write_error)?;
                    out.write_all(value).map_err(write_error)?;
                    out.write_all(b"\n").map_err(write_error)?;
                }
                remaining -= pairs.len() as u64;
                match more {
                    Some(more) if !pairs.is_empty() => next = more,
                    _ => break,
                }
            }
            Ok(true)
        }
        Command::Drop { .. } if command.document().is_ok() => {
            let document = command
                .document()
                .ok()
                .flatten()
                .expect("a document command");
            let dropped = client.document(&document)?["dropped"].as_bool() == Some(true);
            if dropped {
                writeln!(out, "OK").map_err(write_error)?;
            }
            Ok(dropped)
        }
        other if matches!(other.document(), Ok(Some(_))) => {
            let document = other.document().ok().flatten().expect("a document command");
            // A find prints page by page, so a large result streams.
            if matches!(other, Command::Find { .. }) {
                let query = {
                    let mut q = document.clone();
                    if let Some(fields) = q.as_object_mut() {
                        fields.remove("find");
                    }
                    q
                };
                let coll = document["find"].as_str().unwrap_or_default().to_string();
                client.find_each(&coll, &query, |doc| {
                    writeln!(out, "{doc}").map_err(write_error)
                })?;
                return Ok(true);
            }
            let reply = client.document(&document)?;
            for line in document_lines(client, &document, reply, false)? {
                writeln!(out, "{line}").map_err(write_error)?;
            }
            Ok(true)
        }
        other => {
            let request = other.request().map_err(|detail| {
                ClientError::Invalid(kvs_wire::DecodeError::Invalid {
                    what: "command",
                    detail,
                })
            })?;
            writeln!(out, "{}", result_line(client.call(&request))).map_err(write_error)?;
            Ok(true)
        }
    }
}

fn run_shell(client: &Client) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("kvs: cannot start the shell: {e}");
            return ExitCode::from(2);
        }
    };
    let history =
        std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".kvs_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "kvs shell connected to {}; 'help' lists commands, 'quit' leaves",
        client.addr()
    );
    loop {
        let line = match editor.readline(&format!("{}> ", client.addr())) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        match trimmed {
            "quit" | "exit" => break,
            "help" => {
                println!("ping | get KEY | put KEY VALUE | del KEY | cas KEY VERSION VALUE");
                println!("scan [--start K] [--end K] [--limit N] | info | quit");
                println!("insert COLL JSON | find COLL [FILTER] [--sort J] [--skip N] [--limit N] [--projection J]");
                println!(
                    "update COLL FILTER UPDATE [--upsert] [--many] | remove COLL FILTER [--one]"
                );
                println!("count COLL [FILTER] | aggregate COLL PIPELINE | explain COLL FILTER");
                println!("index create|drop|list COLL ... | collections | drop COLL");
                continue;
            }
            _ => {}
        }
        match Command::parse_line(trimmed) {
            Ok(command) => {
                let mut out = std::io::stdout().lock();
                match run_one(client, &command, &mut out) {
                    Ok(true) => {}
                    Ok(false) => println!("(nil)"),
                    Err(e) => println!("ERR {e}"),
                }
            }
            Err(message) => println!("ERR {message}"),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    ExitCode::SUCCESS
}

/// `kvs verify`: runs the `kvsd` next to this binary (or on PATH) with `--verify`.
fn run_verify(data_dir: &str) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("kvsd"))
        .filter(|path| path.exists());
    let kvsd = beside.unwrap_or_else(|| "kvsd".into());
    match std::process::Command::new(&kvsd)
        .args(["--verify", "--data-dir", data_dir])
        .status()
    {
        Ok(status) => ExitCode::from(status.code().unwrap_or(2).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("kvs: cannot run {}: {e}", kvsd.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Verify { data_dir }) = &cli.command {
        return run_verify(data_dir);
    }
    let options = ClientOptions {
        request_timeout: Duration::from_secs(cli.timeout),
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&cli.addr, options) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        None if std::io::stdin().is_terminal() => run_shell(&client),
        None => run_batch(&client),
        Some(command) => {
            let mut out = std::io::stdout().lock();
            match run_one(&client, command, &mut out) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("(nil)");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("ERR {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_values_as_the_rest() {
        assert_eq!(
            Command::parse_line("put k hello world\n").unwrap(),
            Command::Put {
                key: "k".into(),
                value: "hello world".into()
            }
        );
        assert_eq!(
            Command::parse_line("GET k").unwrap(),
            Command::Get { key: "k".into() }
        );
        assert_eq!(
            Command::parse_line("scan --start a --limit 5").unwrap(),
            Command::Scan {
                start: Some("a".into()),
                end: None,
                limit: Some(5)
            }
        );
        assert_eq!(
            Command::parse_line("cas k 3 v 2").unwrap(),
            Command::Cas {
                key: "k".into(),
                version: 3,
                value: "v 2".into()
            }
        );
        assert!(Command::parse_line("put k").is_err());
        assert!(Command::parse_line("frobnicate").is_err());
        assert!(Command::parse_line("scan --limit x").is_err());
        assert!(Command::parse_line("scan --limit 0")
            .unwrap()
            .request()
            .is_err());
    }

    #[test]
    fn result_lines() {
        assert_eq!(result_line(Ok(Response::Written { version: 3 })), "OK");
        assert_eq!(
            result_line(Err(ClientError::Server {
                code: ErrorCode::NotFound,
                message: "x".into()
            })),
            "(nil)"
        );
        assert_eq!(
            result_line(Err(ClientError::Server {
                code: ErrorCode::TooLarge,
                message: "big".into()
            })),
            "ERR TOO_LARGE: big"
        );
    }
}
