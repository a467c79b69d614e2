//! One benchmark connection: sends a window of operations in one write and reads their
//! replies, over kvs's native protocol or RESP (so Redis and kvsd are driven by the same code).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

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
}

/// The outcome of one request: whether it succeeded, and when its reply arrived.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub ok: bool,
    pub at: Instant,
}

pub struct BenchConn {
    stream: TcpStream,
    protocol: Protocol,
    out: Vec<u8>,
    buf: Vec<u8>,
    next_id: u64,
}

impl BenchConn {
    pub fn connect(addr: &str, protocol: Protocol) -> io::Result<BenchConn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(BenchConn {
            stream,
            protocol,
            out: Vec::with_capacity(64 * 1024),
            buf: Vec::with_capacity(64 * 1024),
            next_id: 1,
        })
    }

    /// Sends `ops` in one write and waits for every reply.
    pub fn round_trip(&mut self, ops: &[WireOp]) -> io::Result<Vec<Outcome>> {
        self.out.clear();
        let first_id = self.next_id;
        for op in ops {
            match self.protocol {
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
                    };
                    request.encode(self.next_id, &mut self.out);
                }
                Protocol::Resp => match op {
                    WireOp::Get(key) => resp::command(&mut self.out, &[b"GET", key]),
                    WireOp::Put(key, value) => resp::command(&mut self.out, &[b"SET", key, value]),
                    WireOp::Scan(..) => {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            "scans need --protocol native",
                        ))
                    }
                },
            }
            self.next_id += 1;
        }
        self.stream.write_all(&self.out)?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; ops.len()];
        let mut done = 0;
        let mut chunk = [0u8; 64 * 1024];
        let mut pending: HashMap<u64, usize> = HashMap::new();
        if self.protocol == Protocol::Native {
            pending.extend((0..ops.len()).map(|i| (first_id + i as u64, i)));
        }
        while done < ops.len() {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            let at = Instant::now();
            self.buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            loop {
                let rest = &self.buf[used..];
                match self.protocol {
                    Protocol::Native => match FrameDecoder.decode(rest) {
                        Ok(Decoded::Frame { header, len }) => {
                            let ok = match Response::decode(&header, &rest[FRAME_HEADER_SIZE..len])
                            {
                                Ok(Response::Error { code, .. }) => code == ErrorCode::NotFound,
                                Ok(_) => true,
                                Err(_) => false,
                            };
                            let index = pending.remove(&header.request_id).ok_or_else(|| {
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "reply to an unknown request",
                                )
                            })?;
                            outcomes[index] = Some(Outcome { ok, at });
                            done += 1;
                            used += len;
                        }
                        Ok(Decoded::Incomplete { .. }) => break,
                        Err(e) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                        }
                    },
                    Protocol::Resp => match resp::parse_reply(rest) {
                        Ok(Some((reply, len))) => {
                            outcomes[done] = Some(Outcome {
                                ok: !matches!(reply, Reply::Error(_)),
                                at,
                            });
                            done += 1;
                            used += len;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                        }
                    },
                }
                if done == ops.len() {
                    break;
                }
            }
            self.buf.drain(..used);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every request answered"))
            .collect())
    }
}
