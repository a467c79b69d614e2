//! A blocking benchmark connection for the load phase: sends a window of operations in one
//! write and reads their replies, over kvs's native protocol or RESP (so Redis and kvsd are
//! driven by the same code). The run itself uses `driver`'s event loop; both encode requests
//! and parse replies with [`encode`] and [`parse_reply`], kept here beside the types they read.

use std::io::{self, Read, Write};

use crate::link::BenchStream;

use clap::ValueEnum;
use kvs_wire::frame::{Decoded, FrameDecoder};
use kvs_wire::limits::FRAME_HEADER_SIZE;
use kvs_wire::resp::{self, Reply};
use kvs_wire::{ErrorCode, Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// kvs's binary protocol (kvsd --listen).
    Native,
    /// The Redis protocol (redis-server, or kvsd --resp-listen).
    Resp,
}

/// One request on the wire.
#[derive(Debug, Clone)]
pub enum WireOp {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Scan(Vec<u8>, u32),
    /// A document command (JSON).
    Doc(Vec<u8>),
}

/// Appends `ops` to `out` in `protocol`, numbering native requests from `first_id`.
pub fn encode(
    protocol: Protocol,
    ops: &[WireOp],
    first_id: u64,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    for (i, op) in ops.iter().enumerate() {
        match protocol {
            Protocol::Native => {
                let request = match op {
                    WireOp::Get(key) => Request::Get { key: key.clone() },
                    WireOp::Put(key, value) => Request::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    WireOp::Scan(start, limit) => Request::Scan {
                        start: start.clone(),
                        end: None,
                        limit: *limit,
                    },
                    WireOp::Doc(command) => Request::Document {
                        command: command.clone(),
                    },
                };
                request.encode(first_id + i as u64, out);
            }
            Protocol::Resp => match op {
                WireOp::Get(key) => resp::command(out, &[b"GET", key]),
                WireOp::Put(key, value) => resp::command(out, &[b"SET", key, value]),
                WireOp::Scan(..) | WireOp::Doc(..) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "scans and documents need --protocol native",
                    ))
                }
            },
        }
    }
    Ok(())
}

/// One reply: the request id (native replies), why it failed if it did, its length.
pub type ParsedReply = (Option<u64>, Option<String>, usize);

/// Parses one reply at the front of `buf`.
pub fn parse_reply(protocol: Protocol, buf: &[u8]) -> io::Result<Option<ParsedReply>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    match protocol {
        Protocol::Native => match FrameDecoder
            .decode(buf)
            .map_err(|e| invalid(e.to_string()))?
        {
            Decoded::Frame { header, len } => {
                let failure = match Response::decode(&header, &buf[FRAME_HEADER_SIZE..len]) {
                    // A missing key is an answer, not a failure.
                    Ok(Response::Error {
                        code: ErrorCode::NotFound,
                        ..
                    }) => None,
                    Ok(Response::Error { code, message }) => Some(format!("{code}: {message}")),
                    Ok(_) => None,
                    Err(e) => Some(format!("undecodable reply: {e}")),
                };
                Ok(Some((Some(header.request_id), failure, len)))
            }
            Decoded::Incomplete { .. } => Ok(None),
        },
        Protocol::Resp => Ok(resp::parse_reply(buf)
            .map_err(|e| invalid(e.to_string()))?
            .map(|(reply, len)| {
                let failure = match reply {
                    Reply::Error(e) => Some(e),
                    _ => None,
                };
                (None, failure, len)
            })),
    }
}

pub struct BenchConn {
    stream: BenchStream,
    protocol: Protocol,
    out: Vec<u8>,
    buf: Vec<u8>,
    next_id: u64,
}

impl BenchConn {
    pub fn connect(
        addr: &str,
        protocol: Protocol,
        tls: Option<&kvs_wire::tls::TlsOptions>,
    ) -> io::Result<BenchConn> {
        let stream = BenchStream::connect(addr, tls)?;
        Ok(BenchConn {
            stream,
            protocol,
            out: Vec::with_capacity(64 * 1024),
            buf: Vec::with_capacity(64 * 1024),
            next_id: 1,
        })
    }

    /// Sends `ops` in one write and waits for every reply; returns why each failed, if it
    /// did.
    pub fn round_trip(&mut self, ops: &[WireOp]) -> io::Result<Vec<Option<String>>> {
        self.out.clear();
        let first_id = self.next_id;
        encode(self.protocol, ops, first_id, &mut self.out)?;
        self.next_id += ops.len() as u64;
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        let mut outcomes: Vec<Option<Option<String>>> = vec![None; ops.len()];
        let mut done = 0;
        let mut chunk = [0u8; 64 * 1024];
        while done < ops.len() {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some((id, failure, len)) = parse_reply(self.protocol, &self.buf[used..])? {
                // Native replies may come out of order (shards answer independently); RESP's
                // come in order.
                let index = match id {
                    Some(id) => id
                        .checked_sub(first_id)
                        .map(|i| i as usize)
                        .filter(|&i| i < ops.len()),
                    None => Some(done),
                }
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "reply to an unknown request")
                })?;
                outcomes[index] = Some(failure);
                done += 1;
                used += len;
            }
            self.buf.drain(..used);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "a request got no reply")
                })
            })
            .collect()
    }
}
