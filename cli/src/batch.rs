//! Batch mode (`kvs` with commands on stdin that is not a terminal): one command a line,
//! many requests in flight at once, and exactly one result line per command, in input
//! order, flushed as soon as it is known. It is the fast path for loading and scripting.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use kvs_wire::client::Pending;
use kvs_wire::{Client, ClientError, Response};

use crate::execute::{self, Prepared, Reply, Status};
use crate::output::{error_line, OneLine, MISSING};
use crate::parse;

/// Requests the batch mode keeps in flight at most.
const BATCH_IN_FLIGHT_MAX: usize = 4096;
/// Requests the batch mode sends in one write at most.
const BATCH_WRITE_COUNT_MAX: usize = 256;

/// A result line, and whether it reports a failure (an `ERR` line; a value that happens to
/// start with "ERR" is not one).
struct Line {
    text: String,
    failed: bool,
}

impl Line {
    fn failed(text: String) -> Line {
        Line { text, failed: true }
    }
}

/// The result line of one input line, or what it waits for.
enum Slot {
    Ready(Line),
    /// A reply to come, how to read it, and whom to tell once its line is printed (the
    /// reader waits after a command that reads pages).
    Waiting(Pending, Reply, Option<SyncSender<()>>),
}

/// A line read since the last send: its result already, or the reading of a request
/// being gathered.
enum Entry {
    Ready(Line),
    Sent(Reply),
}

/// Reads commands from stdin, keeps many in flight, prints results in order. The exit code
/// is 0 when every line was answered and none failed (`(nil)` is an answer), 2 when any
/// line failed (its `ERR` line says which) or stdin could not be read, 1 when stdout went
/// away.
pub fn run(client: &Client) -> ExitCode {
    std::thread::scope(|scope| run_in(client, scope))
}

fn run_in<'s>(client: &'s Client, scope: &'s std::thread::Scope<'s, '_>) -> ExitCode {
    let (slots, receiver) = sync_channel::<Slot>(BATCH_IN_FLIGHT_MAX);
    let printer = scope.spawn(move || print_results(receiver, client));
    let mut input = BufReader::with_capacity(256 * 1024, std::io::stdin().lock());
    let mut line = String::new();
    let mut requests = Vec::with_capacity(BATCH_WRITE_COUNT_MAX);
    // Each line read since the last send, in order.
    let mut entries: Vec<Entry> = Vec::with_capacity(BATCH_WRITE_COUNT_MAX);
    // A command that reads pages (find, scan) asks for its later pages after its first:
    // the lines after it wait until it is printed, so it never sees their writes.
    let (printed_pages, pages_done) = sync_channel::<()>(1);
    let mut after_pages = false;
    let mut input_error = None;
    loop {
        line.clear();
        let read = input.read_line(&mut line);
        let at_end = match read {
            Ok(0) => true,
            Ok(_) => {
                if !line.trim().is_empty() {
                    match parse::parse_line(&line)
                        .map_err(|e| Line::failed(error_line(&e)))
                        .and_then(|command| {
                            execute::prepare(command).map_err(|e| Line::failed(error_line(&e)))
                        }) {
                        Ok(Prepared {
                            request: Some(request),
                            reply,
                        }) => {
                            after_pages = reply.reads_pages();
                            requests.push(request);
                            entries.push(Entry::Sent(reply));
                        }
                        Ok(Prepared {
                            request: None,
                            reply,
                        }) => entries.push(Entry::Ready(result_line(client, reply, None))),
                        Err(line) => entries.push(Entry::Ready(line)),
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
        if at_end || !more_waiting || after_pages || entries.len() >= BATCH_WRITE_COUNT_MAX {
            let mut pendings = match client.submit_many(&requests) {
                Ok(pendings) => pendings.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => requests
                    .iter()
                    .map(|_| Err(Line::failed(error_line(&e))))
                    .collect(),
            }
            .into_iter();
            let last = entries.len().saturating_sub(1);
            for (at, entry) in entries.drain(..).enumerate() {
                // Only a command just read can be the last entry with `after_pages` set.
                let notify = (after_pages && at == last).then(|| printed_pages.clone());
                let slot = match entry {
                    Entry::Ready(line) => Slot::Ready(line),
                    Entry::Sent(reply) => match pendings.next() {
                        Some(Ok(pending)) => Slot::Waiting(pending, reply, notify),
                        Some(Err(line)) => Slot::Ready(line),
                        None => unreachable!("one pending per request"),
                    },
                };
                if slots.send(slot).is_err() {
                    return ExitCode::FAILURE; // the printer died: stdout is gone
                }
            }
            requests.clear();
            if after_pages {
                // Nothing more is sent until the last page is in.
                if pages_done.recv().is_err() {
                    return ExitCode::FAILURE;
                }
                after_pages = false;
            }
        }
        if at_end {
            break;
        }
    }
    drop(slots);
    let printed = printer.join().unwrap_or(None);
    if let Some(e) = input_error {
        eprintln!("kvs: reading stdin: {e}");
        return ExitCode::from(2);
    }
    match printed {
        Some(false) => ExitCode::SUCCESS,
        Some(true) => ExitCode::from(2),
        None => ExitCode::FAILURE,
    }
}

/// The one line a command's reply prints.
fn result_line(
    client: &Client,
    reply: Reply,
    response: Option<Result<Response, ClientError>>,
) -> Line {
    let mut out = OneLine::default();
    match execute::finish(client, reply, response, &mut out) {
        Ok(Status::Done) => Line {
            text: out.into_line(),
            failed: false,
        },
        Ok(Status::Missing) => Line {
            text: MISSING.to_string(),
            failed: false,
        },
        Err(e) => Line::failed(error_line(&e)),
    }
}

/// Prints each result as soon as it and all before it are known; flushes whenever the next
/// result is not ready yet, so a reader sees every line without delay. Returns whether any
/// line failed, or None when stdout could not be written.
fn print_results(slots: Receiver<Slot>, client: &Client) -> Option<bool> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut any_failed = false;
    loop {
        let slot = match slots.try_recv() {
            Ok(slot) => slot,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    return None;
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
            Slot::Waiting(mut pending, reply, notify) => {
                let response = match pending.try_wait() {
                    Some(response) => response,
                    None => {
                        if out.flush().is_err() {
                            return None;
                        }
                        pending.wait()
                    }
                };
                let line = result_line(client, reply, Some(response));
                if let Some(notify) = notify {
                    // All its pages are read: the reader may send the lines after it.
                    let _ = notify.send(());
                }
                line
            }
        };
        any_failed |= line.failed;
        if writeln!(out, "{}", line.text).is_err() {
            return None;
        }
    }
    out.flush().ok().map(|()| any_failed)
}
