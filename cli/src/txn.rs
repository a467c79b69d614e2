//! `kvs txn [--isolation read-committed|serializable|read-only]`: the lines read from stdin (or typed
//! at the prompt) run as one transaction. Each line is a command of the usual grammar — get,
//! put, del, cas, scan, and the document commands insert, find, update, remove, count and
//! aggregate — and its result is printed as `kvs` prints it; `commit` ends the
//! transaction and prints `COMMITTED`, `rollback` rolls it back. When the server aborts the
//! transaction (a conflict, a deadlock, a timeout) the reason is printed as
//! `ABORTED CODE: message`. The exit code is 0 only when the transaction committed.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use kvs_wire::{Client, ClientError, ErrorCode, Isolation, Request, Transaction};

use crate::execute::{self, Reply};
use crate::grammar::Command;
use crate::output::{error_line, Lines, Output, MISSING};

/// Whether an error ended the transaction on the server.
fn ends_it(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(
            ErrorCode::TxnConflict
                | ErrorCode::Deadlock
                | ErrorCode::TxnTimeout
                | ErrorCode::TxnNotFound
        )
    ) || error.code().is_none()
}

/// Runs one line in the transaction; prints its result.
fn run_line(txn: &Transaction<'_>, command: Command, out: &mut impl Write) -> Result<(), Failed> {
    match command {
        Command::Get { key, version, .. } => match txn.get_versioned(key.as_bytes())? {
            Some((v, value)) => {
                if version {
                    write!(out, "{v}\t")?;
                }
                out.write_all(&value)?;
                writeln!(out)?;
            }
            None => writeln!(out, "{MISSING}")?,
        },
        Command::Put { key, value } => {
            txn.put(key.as_bytes(), value.as_bytes())?;
            writeln!(out, "OK")?;
        }
        Command::Del { key } => {
            let existed = txn.delete(key.as_bytes())?;
            writeln!(out, "{}", if existed { "OK" } else { MISSING })?;
        }
        Command::Cas {
            key,
            version,
            value,
        } => {
            txn.cas(key.as_bytes(), version, Some(value.as_bytes()))?;
            writeln!(out, "OK")?;
        }
        Command::Scan { start, end, limit } => {
            let mut remaining = limit.unwrap_or(u64::MAX);
            let mut start = start.unwrap_or_default().into_bytes();
            let end = end.map(String::into_bytes);
            while remaining > 0 {
                let page = remaining.min(1000) as u32;
                let (pairs, next) = txn.scan(&start, end.as_deref(), page)?;
                for (key, value) in &pairs {
                    out.write_all(key)?;
                    out.write_all(b"\t")?;
                    out.write_all(value)?;
                    writeln!(out)?;
                }
                remaining -= pairs.len() as u64;
                match next {
                    Some(next) => start = next,
                    None => break,
                }
            }
        }
        command @ (Command::Insert { .. }
        | Command::Find { .. }
        | Command::Update { .. }
        | Command::Remove { .. }
        | Command::Count { .. }
        | Command::Aggregate { .. }) => run_document(txn, command, out)?,
        other => {
            return Err(Failed::Refused(format!(
                "{} cannot run inside a transaction (get, put, del, cas, scan, insert, find, \
                 update, remove, count and aggregate can)",
                name_of(&other)
            )))
        }
    }
    Ok(())
}

/// A document command in the transaction, printed as `kvs` prints it.
fn run_document(
    txn: &Transaction<'_>,
    command: Command,
    out: &mut impl Write,
) -> Result<(), Failed> {
    let prepared = execute::prepare(command).map_err(failure)?;
    let Some(Request::Document { command }) = prepared.request else {
        unreachable!("a document command sends a DOCUMENT request")
    };
    let mut command: serde_json::Value = serde_json::from_slice(&command)
        .map_err(|e| Failed::Refused(format!("the command is not JSON: {e}")))?;
    let mut lines = Lines(out);
    match prepared.reply {
        Reply::Found { .. } => loop {
            let mut reply = txn.document(&command)?;
            if let serde_json::Value::Array(documents) = reply["documents"].take() {
                for document in documents {
                    lines.item(document)?;
                }
            }
            match reply.get("cursor") {
                Some(cursor) if !cursor.is_null() => command["cursor"] = cursor.clone(),
                _ => break,
            }
        },
        reply => {
            let body = txn.document(&command)?;
            execute::finish_document(reply, body, &mut lines).map_err(failure)?;
        }
    }
    Ok(())
}

fn failure(failure: execute::Failure) -> Failed {
    match failure {
        execute::Failure::Client(e) => Failed::Client(e),
        execute::Failure::Output(e) => Failed::Io(e),
        other => Failed::Refused(other.to_string()),
    }
}

fn name_of(command: &Command) -> String {
    format!("{command:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or("that command")
        .to_ascii_lowercase()
}

enum Failed {
    Client(ClientError),
    Refused(String),
    Io(std::io::Error),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        Failed::Client(e)
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Failed {
        Failed::Io(e)
    }
}

/// `kvs txn`: see the module documentation.
pub fn run(client: &Client, isolation: Isolation) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let interactive = std::io::stdin().is_terminal();
    let txn = match client.begin(isolation) {
        Ok(txn) => txn,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("txn {}> ", isolation.name());
        }
        let Some(line) = lines.next() else {
            let _ = txn.rollback();
            let _ = writeln!(out, "ROLLED BACK (no commit before the end of the input)");
            return ExitCode::from(1);
        };
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!("kvs: reading stdin: {e}");
                return ExitCode::from(2);
            }
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.to_ascii_lowercase().as_str() {
            "commit" => {
                return match txn.commit() {
                    Ok(_) => {
                        let _ = writeln!(out, "COMMITTED");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{}", aborted(&e));
                        ExitCode::from(1)
                    }
                }
            }
            "rollback" => {
                let _ = txn.rollback();
                let _ = writeln!(out, "ROLLED BACK");
                return ExitCode::from(1);
            }
            _ => {}
        }
        let command = match crate::parse::parse_line(line) {
            Ok(command) => command,
            Err(e) => {
                let _ = writeln!(out, "{}", error_line(&e));
                continue;
            }
        };
        match run_line(&txn, command, &mut out) {
            Ok(()) => {}
            Err(Failed::Client(e)) if ends_it(&e) => {
                let _ = writeln!(out, "{}", aborted(&e));
                return ExitCode::from(1);
            }
            Err(Failed::Client(e)) => {
                let _ = writeln!(out, "{}", error_line(&e));
            }
            Err(Failed::Refused(message)) => {
                let _ = writeln!(out, "ERR {message}");
            }
            Err(Failed::Io(e)) => {
                eprintln!("kvs: writing the output: {e}");
                return ExitCode::from(2);
            }
        }
        let _ = out.flush();
    }
}

/// The abort line: `ABORTED CODE: message`.
fn aborted(error: &ClientError) -> String {
    format!("ABORTED {}", error.to_string().replace('\n', " "))
}
