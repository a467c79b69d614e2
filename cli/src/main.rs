//! `kvs`: the command-line client for kvsd.
//!
//! Three modes: a one-shot command (`kvs get KEY`), a batch mode when there is no command and
//! stdin is not a terminal (one command a line, many requests in flight, one result line per
//! command in input order), and an interactive shell with history when stdin is a terminal.
//! All three parse commands with one grammar (`grammar.rs`, `parse.rs`).

mod grammar;
mod help;
mod parse;
mod words;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use kvs_wire::client::Pending;
use kvs_wire::limits::SCAN_LIMIT_MAX;
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode, Request, Response};
use serde_json::json;

use crate::grammar::Command;
use crate::parse::{Action, ParseError};

/// Requests the batch mode keeps in flight at most.
const BATCH_IN_FLIGHT_MAX: usize = 4096;
/// Requests the batch mode sends in one write at most.
const BATCH_WRITE_COUNT_MAX: usize = 256;
/// Pairs one SCAN line of batch or shell mode asks for unless told otherwise.
const SCAN_LIMIT_DEFAULT: u32 = 100;

/// The document command (JSON) `command` runs, if it is one.
fn document(command: &Command) -> Option<serde_json::Value> {
    let filter = |filter: &Option<serde_json::Value>| filter.clone().unwrap_or_else(|| json!({}));
    Some(match command {
        Command::Insert { coll, documents } => {
            let docs = match documents {
                serde_json::Value::Array(docs) => docs.clone(),
                doc => vec![doc.clone()],
            };
            json!({"insert": coll, "documents": docs})
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
                command["sort"] = sort.clone();
            }
            if let Some(skip) = skip {
                command["skip"] = json!(skip);
            }
            if let Some(limit) = limit {
                command["limit"] = json!(limit);
            }
            if let Some(projection) = projection {
                command["projection"] = projection.clone();
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
            "filter": filter,
            "u": update,
            "upsert": upsert,
            "multi": many,
        }),
        Command::Remove { coll, filter, one } => json!({
            "delete": coll, "filter": filter, "multi": !one
        }),
        Command::Count {
            coll,
            filter: count_filter,
        } => json!({"count": coll, "filter": filter(count_filter)}),
        Command::Aggregate { coll, pipeline } => json!({"aggregate": coll, "pipeline": pipeline}),
        Command::Explain {
            coll,
            filter: explain_filter,
            sort,
            limit,
        } => {
            let mut command = json!({"explain": coll, "filter": filter(explain_filter)});
            if let Some(sort) = sort {
                command["sort"] = sort.clone();
            }
            if let Some(limit) = limit {
                command["limit"] = json!(limit);
            }
            command
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
            command
        }
        Command::IndexDrop { coll, name } => json!({"dropIndex": coll, "name": name}),
        Command::IndexList { coll } => json!({"listIndexes": coll}),
        Command::Collections => json!({"listCollections": 1}),
        Command::Drop { coll } => json!({"drop": coll}),
        _ => return None,
    })
}

/// The single request `command` sends in batch or shell mode.
fn request(command: &Command) -> Result<Request, String> {
    if let Some(command) = document(command) {
        return Ok(Request::Document {
            command: command.to_string().into_bytes(),
        });
    }
    Ok(match command.clone() {
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
                    let parsed = parse::parse_line(&line)
                        .map_err(|e| e.to_string())
                        .and_then(|c| Ok((request(&c)?, document(&c))));
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
        Command::Drop { .. } => {
            let document = document(command).expect("a document command");
            let dropped = client.document(&document)?["dropped"].as_bool() == Some(true);
            if dropped {
                writeln!(out, "OK").map_err(write_error)?;
            }
            Ok(dropped)
        }
        other if document(other).is_some() => {
            let document = document(other).expect("a document command");
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
            let request = request(other).map_err(|detail| {
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
            _ => {}
        }
        if let Some(topic) = trimmed
            .strip_prefix("help")
            .filter(|t| t.is_empty() || t.starts_with(' '))
        {
            match help::help(topic, "") {
                Ok(text) => print!("{text}"),
                Err(message) => println!("ERR {message}"),
            }
            continue;
        }
        match parse::parse_line(&line) {
            Ok(command) => {
                let mut out = std::io::stdout().lock();
                match run_one(client, &command, &mut out) {
                    Ok(true) => {}
                    Ok(false) => println!("(nil)"),
                    Err(e) => println!("ERR {e}"),
                }
            }
            Err(ParseError::Help(topic)) => {
                if let Ok(text) = help::help(&topic, "") {
                    print!("{text}");
                }
            }
            Err(e) => println!("ERR {e}"),
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
    let mut args = Vec::new();
    for (at, arg) in std::env::args_os().skip(1).enumerate() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("kvs: argument {} is not UTF-8: {arg:?}", at + 1);
                return ExitCode::from(2);
            }
        }
    }
    let invocation = match parse::parse_args(args) {
        Ok(invocation) => invocation,
        Err(e) => return usage_error(&e),
    };
    let command = match invocation.action {
        Action::Help(topic) => {
            return match help::help(&topic, "kvs ") {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(message) => usage_error(&ParseError::Unknown(message)),
            }
        }
        Action::Version => {
            println!("kvs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Run(Command::Verify { data_dir }) => return run_verify(&data_dir),
        Action::Run(command) => Some(command),
        Action::Commands => None,
    };
    let options = ClientOptions {
        request_timeout: Duration::from_secs(invocation.timeout_secs),
        ..ClientOptions::default()
    };
    let client = match Client::connect_with(&invocation.addr, options) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    match &command {
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

/// A command line that is not a command: exit code 2, with the usage.
fn usage_error(error: &ParseError) -> ExitCode {
    match error {
        ParseError::Usage {
            problem: Some(problem),
            usage,
        } => eprintln!("kvs: {problem}\nusage: {}", with_kvs(usage)),
        ParseError::Usage { usage, .. } => eprintln!("usage: {}", with_kvs(usage)),
        other => eprintln!("kvs: {other}\n'kvs --help' lists the commands"),
    }
    ExitCode::from(2)
}

/// A command's usage as typed on the command line.
fn with_kvs(usage: &str) -> String {
    if usage.starts_with("kvs ") {
        usage.to_string()
    } else {
        format!("kvs {}", usage.replace(" | ", " | kvs "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
