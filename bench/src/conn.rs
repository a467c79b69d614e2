//! A blocking benchmark connection for the load phase: sends a window of operations in one
//! write and reads their replies, over kvs's native protocol or RESP (so Redis and kvsd are
//! driven by the same code). The run itself uses `driver`'s event loop.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use clap::ValueEnum;

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

    /// Sends `ops` in one write and waits for every reply; returns whether each succeeded.
    pub fn round_trip(&mut self, ops: &[WireOp]) -> io::Result<Vec<bool>> {
        self.out.clear();
        let first_id = self.next_id;
        crate::driver::encode(self.protocol, ops, first_id, &mut self.out)?;
        self.next_id += ops.len() as u64;
        self.stream.write_all(&self.out)?;
        let mut outcomes: Vec<Option<bool>> = vec![None; ops.len()];
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
            while let Some((id, ok, len)) =
                crate::driver::parse_reply(self.protocol, &self.buf[used..])?
            {
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
                outcomes[index] = Some(ok);
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
