//! `kvs-read-floor`: the least work a server can do per cold GET, to measure what this machine
//! allows before any storage engine runs.
//!
//! It answers the native protocol's GET (and PING) on one thread and one io_uring, set up as
//! kvsd's executor sets up its ring: frames are checked and decoded with `kvs-wire`, each GET
//! reads one 4 KiB page of `--file` with O_DIRECT (the page the key hashes to) and answers
//! with `--value-size` bytes of it. No tree, no cache, no log. `../shared/check/random-read-vs-device`
//! compares kvsd's cold GETs with fio's IOPS; running this server under the same client
//! (`bench/random-read-floor.sh`) says how much of the gap is kvsd's and how much is the
//! network path and the disk's latency on this machine.
//!
//! `--submit round` submits what a round of completions queued in one `io_uring_enter`, as
//! kvsd does; `--submit eager` enters once per disk read, as soon as it is asked for.
//! `--poll-us N` keeps entering without sleeping for N µs after the last completion (the
//! idle polling of Seastar-style reactors); 0 sleeps at once.

use std::alloc::{alloc, Layout};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use io_uring::{opcode, squeue, types, IoUring};
use kvs_wire::frame::{Decoded, FrameDecoder};
use kvs_wire::limits::FRAME_HEADER_SIZE;
use kvs_wire::message::{Request, Response};
use kvs_wire::ErrorCode;

const PAGE: usize = 4096;
const RECEIVE_BUFFER: usize = 64 * 1024;
/// user_data: an operation's kind in the top four bits, its connection or read slot below.
const KIND_SHIFT: u32 = 60;
const ACCEPT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const READ: u64 = 4;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Submit {
    /// One enter per round for everything the round queued (kvsd's executor).
    Round,
    /// Disk reads submitted the moment they are asked for; the rest once per round.
    Eager,
}

#[derive(Parser)]
#[command(about = "The least work a server can do per cold GET: a floor for kvsd's random reads")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: String,
    /// File to read pages from with O_DIRECT (a few GiB, written beforehand, e.g. by fio).
    #[arg(long)]
    file: PathBuf,
    /// Bytes of the page each GET answers with.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    #[arg(long, value_enum, default_value = "round")]
    submit: Submit,
    /// Keep polling the ring this long after the last completion before sleeping.
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
}

struct Conn {
    fd: i32,
    input: Vec<u8>,
    /// Bytes of `input` received and not yet taken as frames.
    have: usize,
    /// Replies waiting for the send in flight to finish.
    output: Vec<u8>,
    /// The bytes of the send in flight; empty when none is.
    sending: Vec<u8>,
    /// Operations the kernel still holds for this connection (a recv, a send, reads).
    in_kernel: usize,
    closing: bool,
}

/// A page read in flight: its buffer, and whom it answers.
struct ReadSlot {
    buffer: *mut u8,
    conn: usize,
    request_id: u64,
}

struct Server {
    ring: IoUring,
    args: Args,
    file_fd: i32,
    pages: u64,
    listen_fd: i32,
    conns: Vec<Option<Conn>>,
    reads: Vec<ReadSlot>,
    free_reads: Vec<usize>,
    /// Entries queued this round, submitted by the next enter.
    queued: Vec<squeue::Entry>,
}

fn user_data(kind: u64, index: usize) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

impl Server {
    /// Queues `entry`; its buffers must stay put until its completion is reaped.
    fn queue(&mut self, entry: squeue::Entry) {
        self.queued.push(entry);
    }

    fn push_queued(&mut self) -> anyhow::Result<()> {
        for entry in self.queued.drain(..) {
            // SAFETY: every buffer an entry names (a connection's input or sending vector,
            // a read slot's page) is left untouched until the entry's completion is reaped.
            while unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.ring.submit().context("io_uring submit")?;
            }
        }
        Ok(())
    }

    fn arm_accept(&mut self) {
        let entry = opcode::Accept::new(
            types::Fd(self.listen_fd),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(user_data(ACCEPT, 0));
        self.queue(entry);
    }

    fn arm_recv(&mut self, c: usize) {
        let conn = self.conns[c].as_mut().expect("a live connection");
        let room = &mut conn.input[conn.have..];
        assert!(!room.is_empty(), "a frame larger than the receive buffer");
        let entry = opcode::Recv::new(types::Fd(conn.fd), room.as_mut_ptr(), room.len() as u32)
            .build()
            .user_data(user_data(RECV, c));
        conn.in_kernel += 1;
        self.queue(entry);
    }

    fn start_send(&mut self, c: usize) {
        let conn = self.conns[c].as_mut().expect("a live connection");
        if !conn.sending.is_empty() || conn.output.is_empty() || conn.closing {
            return;
        }
        std::mem::swap(&mut conn.output, &mut conn.sending);
        let entry = opcode::Send::new(
            types::Fd(conn.fd),
            conn.sending.as_ptr(),
            conn.sending.len() as u32,
        )
        .build()
        .user_data(user_data(SEND, c));
        conn.in_kernel += 1;
        self.queue(entry);
    }

    fn start_read(&mut self, c: usize, request_id: u64, key: &[u8]) -> anyhow::Result<()> {
        let slot = match self.free_reads.pop() {
            Some(slot) => slot,
            None => {
                let layout = Layout::from_size_align(PAGE, PAGE).expect("a page layout");
                // SAFETY: the layout has a non-zero size. Slots are never freed: they are
                // reused, and the process ends with them.
                let buffer = unsafe { alloc(layout) };
                assert!(!buffer.is_null(), "out of memory");
                self.reads.push(ReadSlot {
                    buffer,
                    conn: 0,
                    request_id: 0,
                });
                self.reads.len() - 1
            }
        };
        let page = fnv1a(key) % self.pages;
        let read = &mut self.reads[slot];
        read.conn = c;
        read.request_id = request_id;
        let entry = opcode::Read::new(types::Fd(self.file_fd), read.buffer, PAGE as u32)
            .offset(page * PAGE as u64)
            .build()
            .user_data(user_data(READ, slot));
        self.conns[c].as_mut().expect("a live connection").in_kernel += 1;
        self.queue(entry);
        if self.args.submit == Submit::Eager {
            self.push_queued()?;
            self.ring.submit().context("io_uring submit")?;
        }
        Ok(())
    }

    fn received(&mut self, c: usize, result: i32) -> anyhow::Result<()> {
        let conn = self.conns[c].as_mut().expect("a live connection");
        if result <= 0 {
            conn.closing = true;
            return Ok(());
        }
        conn.have += result as usize;
        let mut taken = 0;
        let mut gets = Vec::new();
        loop {
            let buf = &conn.input[taken..conn.have];
            let (header, len) = match FrameDecoder.decode(buf) {
                Ok(Decoded::Frame { header, len }) => (header, len),
                Ok(Decoded::Incomplete { .. }) => break,
                Err(e) => bail!("connection {c}: {e}"),
            };
            let body = &buf[FRAME_HEADER_SIZE..len];
            match Request::decode_body(header.opcode, body) {
                Ok(Request::Get { key }) => gets.push((header.request_id, key)),
                Ok(Request::Ping) => {
                    Response::Pong.encode(header.opcode, header.request_id, &mut conn.output)
                }
                _ => Response::error(
                    ErrorCode::BadRequest,
                    "this floor server answers only GET and PING",
                )
                .encode(header.opcode, header.request_id, &mut conn.output),
            }
            taken += len;
        }
        conn.input.copy_within(taken..conn.have, 0);
        conn.have -= taken;
        for (request_id, key) in gets {
            self.start_read(c, request_id, &key)?;
        }
        self.arm_recv(c);
        self.start_send(c);
        Ok(())
    }

    fn page_read(&mut self, slot: usize, result: i32) -> anyhow::Result<()> {
        if result != PAGE as i32 {
            bail!("page read returned {result}");
        }
        self.free_reads.push(slot);
        let read = &self.reads[slot];
        let c = read.conn;
        // SAFETY: the kernel has finished writing the slot's PAGE bytes (its completion is
        // reaped), and the slot is not reused before this borrow ends.
        let page = unsafe { std::slice::from_raw_parts(read.buffer, PAGE) };
        let conn = self.conns[c]
            .as_mut()
            .expect("a connection with a read in flight");
        conn.in_kernel -= 1;
        let value_size = self.args.value_size.min(PAGE);
        let response = Response::Value {
            version: 1,
            value: page[..value_size].to_vec(),
        };
        response.encode(
            kvs_wire::message::Opcode::Get as u8,
            read.request_id,
            &mut conn.output,
        );
        self.start_send(c);
        Ok(())
    }

    fn sent(&mut self, c: usize, result: i32) {
        let conn = self.conns[c]
            .as_mut()
            .expect("a connection with a send in flight");
        conn.in_kernel -= 1;
        if result < 0 {
            conn.closing = true;
            conn.sending.clear();
            return;
        }
        let sent = result as usize;
        conn.sending.drain(..sent);
        if !conn.sending.is_empty() {
            // A short send: the rest goes first, then whatever queued meanwhile.
            let rest = std::mem::take(&mut conn.sending);
            let queued = std::mem::replace(&mut conn.output, rest);
            conn.output.extend_from_slice(&queued);
        }
        self.start_send(c);
    }

    fn complete(&mut self, user_data: u64, result: i32) -> anyhow::Result<()> {
        let index = (user_data & ((1 << KIND_SHIFT) - 1)) as usize;
        match user_data >> KIND_SHIFT {
            ACCEPT => {
                if result < 0 {
                    bail!("accept: {}", std::io::Error::from_raw_os_error(-result));
                }
                let fd = result;
                set_nodelay(fd);
                self.conns.push(Some(Conn {
                    fd,
                    input: vec![0; RECEIVE_BUFFER],
                    have: 0,
                    output: Vec::new(),
                    sending: Vec::new(),
                    in_kernel: 0,
                    closing: false,
                }));
                self.arm_recv(self.conns.len() - 1);
                self.arm_accept();
            }
            RECV => {
                self.conns[index]
                    .as_mut()
                    .expect("a live connection")
                    .in_kernel -= 1;
                self.received(index, result)?;
            }
            SEND => self.sent(index, result),
            READ => self.page_read(index, result)?,
            kind => unreachable!("an operation of kind {kind}"),
        }
        let conn = self.conns.get_mut(index);
        if let Some(Some(conn)) = conn {
            if conn.closing && conn.in_kernel == 0 {
                // SAFETY: the fd is ours, and no operation still names it.
                unsafe { libc::close(conn.fd) };
                self.conns[index] = None;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> anyhow::Result<()> {
        self.arm_accept();
        let poll_for = Duration::from_micros(self.args.poll_us);
        let mut last_completion = Instant::now();
        let mut completions = Vec::new();
        loop {
            self.push_queued()?;
            if last_completion.elapsed() < poll_for {
                // Enter for events without waiting: submits, and runs the deferred work that
                // posts completions.
                let now = types::Timespec::new();
                let args = types::SubmitArgs::new().timespec(&now);
                match self.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                    Err(e) => return Err(e).context("io_uring enter"),
                }
            } else {
                self.ring.submit_and_wait(1).context("io_uring enter")?;
            }
            completions.clear();
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if !completions.is_empty() {
                last_completion = Instant::now();
            }
            for &(user_data, result) in &completions {
                self.complete(user_data, result)?;
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn set_nodelay(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args.file)
        .with_context(|| format!("cannot open {} with O_DIRECT", args.file.display()))?;
    let pages = file.metadata()?.len() / PAGE as u64;
    if pages == 0 {
        bail!("{} holds no whole page", args.file.display());
    }
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let ring = IoUring::builder()
        .setup_cqsize(4096)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_defer_taskrun()
        .build(1024)
        .context("io_uring setup (needs Linux 6.1)")?;
    eprintln!(
        "kvs-read-floor: {} pages of {}, listening on {}",
        pages,
        args.file.display(),
        args.listen
    );
    let mut server = Server {
        ring,
        file_fd: file.as_raw_fd(),
        pages,
        listen_fd: listener.as_raw_fd(),
        args,
        conns: Vec::new(),
        reads: Vec::new(),
        free_reads: Vec::new(),
        queued: Vec::new(),
    };
    // `file` and `listener` live until `run` returns (it returns only on an error).
    let result = server.run();
    drop((file, listener));
    result
}
