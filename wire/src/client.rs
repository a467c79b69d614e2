//! A blocking Rust client for kvsd with pipelining, typed errors, timeouts and reconnect.
//!
//! One TCP connection carries any number of requests in flight: [`Client::submit`] writes a
//! request and returns a [`Pending`] at once; a reader thread matches replies to requests by
//! request id. The convenience methods (`get`, `put`, ...) submit and wait. A `Client` is
//! `Send + Sync`, so threads can share one connection.
//!
//! When the connection breaks, every request in flight fails with
//! [`ClientError::Disconnected`] (a write may or may not have been applied, since it may have
//! reached the server) and the next request reconnects, at most once per `reconnect_backoff`.
//!
//! The address may list several nodes of a cluster, comma-separated (`A,B,C`): the client
//! connects to the first that answers and, when its node goes away, to the next. Any node
//! takes any request (it forwards to the shard's leader), but the client saves that hop:
//! it learns each shard's leader from INFO (`routes`) and sends a single-key request
//! (get, put, delete, cas) through [`Client::call`] straight to its leader, on a connection
//! of its own to that node. A request refused with NO_QUORUM or NOT_LEADER was surely not
//! applied (docs/cluster.md), so `call` learns the leaders again and sends it again after a
//! short pause while the cluster elects a leader, up to the request timeout. Pipelined
//! requests (`submit`, `submit_many`) all go on the main connection, in order.
//!
//! Idempotent writes (ADR 0018): the client is a session (a random 64-bit id) and numbers
//! its writes. [`Client::call`] sends each PUT, DELETE, CAS and MPUT as a ONCE carrying the
//! session, the write's number and the lowest number whose reply it still waits for; when
//! the connection breaks or no answer comes (the outcome unknown), it sends the same ONCE
//! again, to the next node if its node went away, until the request timeout: the shard
//! applies it at most once and answers a retry with the first answer. Reads through `call`
//! are sent again alike (they change nothing). Pipelined requests (`submit`) are sent as
//! they are, and fail with the connection as before.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::{self, Credentials, Role};
use crate::documents;
use crate::frame::{Decoded, FrameDecoder};
use crate::limits::FRAME_HEADER_SIZE;
use crate::message::{DecodeError, ErrorCode, Request, Response};
use crate::routes::Routes;
use crate::session::Session;
use crate::tls::{Link, TlsOptions};
use serde_json::Value as JsonValue;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// How long a request waits for its reply before failing with `Timeout`.
    pub request_timeout: Duration,
    /// Least time between two connection attempts after a failure.
    pub reconnect_backoff: Duration,
    /// Whether [`Client::call`] sends writes as ONCE (applied at most once, retried when the
    /// outcome is unknown; ADR 0018).
    pub write_once: bool,
    /// Who to authenticate as on every connection (ADR 0025), when the server asks for it.
    pub credentials: Option<Credentials>,
    /// Connect over TLS, trusting these authorities (docs/security.md).
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            reconnect_backoff: Duration::from_millis(100),
            write_once: true,
            credentials: None,
            tls: None,
        }
    }
}

/// Everything that can go wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("no reply within {0:?}: the outcome is unknown (the request may have taken effect)")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error("request refused before sending: {0}")]
    Invalid(#[from] DecodeError),
}

impl From<documents::ReplyError> for ClientError {
    fn from(error: documents::ReplyError) -> ClientError {
        ClientError::Protocol(error.0)
    }
}

impl ClientError {
    /// The server's error code, when the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::Invalid(e) => Some(e.code()),
            _ => None,
        }
    }
}

/// One page of SCAN: the pairs, and the key to continue from when there may be more.
pub type ScanPage = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// A value with its version, as MGET returns it.
pub type VersionedValue = (u64, Vec<u8>);

type ReplySender = SyncSender<Result<Response, ClientError>>;

struct Connection {
    stream: TcpStream,
    writer: Mutex<TcpStream>,
    /// Plain bytes, or a TLS session.
    link: Link,
    /// Requests in flight. `None` once the connection is broken: no request may be added then.
    pending: Mutex<Option<HashMap<u64, ReplySender>>>,
    broken: AtomicBool,
    /// Why it broke, once it did.
    reason: Mutex<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the map and the
    // stream stay usable, so go on rather than spread the panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    fn open(addr: &str, options: &ClientOptions) -> Result<Arc<Connection>, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut last_error = None;
        let mut stream = None;
        for socket_addr in addr.to_socket_addrs().map_err(connect_error)? {
            match TcpStream::connect_timeout(&socket_addr, options.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            connect_error(last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "address resolved to nothing")
            }))
        })?;
        let mut stream = stream;
        stream.set_nodelay(true).map_err(connect_error)?;
        let link = Link::open(&mut stream, addr, options.tls.as_ref()).map_err(connect_error)?;
        let writer = stream.try_clone().map_err(connect_error)?;
        let reader = stream.try_clone().map_err(connect_error)?;
        let connection = Arc::new(Connection {
            stream,
            writer: Mutex::new(writer),
            link,
            pending: Mutex::new(Some(HashMap::new())),
            broken: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        });
        let for_reader = Arc::clone(&connection);
        std::thread::Builder::new()
            .name("kvs-client-reader".into())
            .spawn(move || for_reader.read_loop(reader))
            .map_err(connect_error)?;
        if let Some(credentials) = &options.credentials {
            let authenticated = connection.authenticate(credentials, options.request_timeout);
            if let Err(e) = authenticated {
                connection.fail("authentication failed", false);
                return Err(e);
            }
        }
        Ok(connection)
    }

    /// Proves the password (ADR 0025) and checks the server's signature; the role granted.
    fn authenticate(&self, who: &Credentials, timeout: Duration) -> Result<Role, ClientError> {
        let nonce = auth::random_bytes(auth::NONCE_LEN);
        let start = Request::AuthStart {
            user: who.user.clone(),
            nonce: nonce.clone(),
        };
        let Response::AuthChallenge {
            salt,
            cost,
            nonce: theirs,
        } = self.call(start, timeout)?
        else {
            return Err(ClientError::Protocol("AUTH_START answered oddly".into()));
        };
        let message = auth::auth_message(&who.user, &nonce, &theirs);
        let (proof, expected) = auth::client_proof(who.password.as_bytes(), &salt, cost, &message)
            .map_err(|e| ClientError::Protocol(e.0))?;
        let finish = Request::AuthFinish {
            proof: proof.to_vec(),
        };
        match self.call(finish, timeout)? {
            Response::Authenticated { role, signature }
                if auth::server_signature_matches(&expected, &signature) =>
            {
                Ok(role)
            }
            _ => Err(ClientError::Protocol(
                "the server's signature is wrong: it does not hold the user's verifier".into(),
            )),
        }
    }

    /// One request on this connection alone (the authentication before any other), with a
    /// request id no client request uses.
    fn call(&self, request: Request, timeout: Duration) -> Result<Response, ClientError> {
        let request_id = u64::MAX - request.opcode() as u64;
        let (sender, receiver) = sync_channel(1);
        lock(&self.pending)
            .as_mut()
            .ok_or_else(|| ClientError::Disconnected("connection broke".into()))?
            .insert(request_id, sender);
        let mut bytes = Vec::new();
        request.encode(request_id, &mut bytes);
        self.link
            .write_all(&mut lock(&self.writer), &bytes)
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        match receiver.recv_timeout(timeout) {
            Ok(Ok(Response::Error { code, message })) => Err(ClientError::Server { code, message }),
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    fn read_loop(&self, mut stream: TcpStream) {
        let (reason, refused) = self.read_replies(&mut stream);
        self.fail(&reason, refused);
    }

    /// Reads replies until the stream ends; returns why it ended, and whether the server
    /// refused the TLS session (a retry would be refused alike).
    fn read_replies(&self, stream: &mut TcpStream) -> (String, bool) {
        let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut start = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            loop {
                match FrameDecoder.decode(&buffer[start..]) {
                    Ok(Decoded::Frame { header, len }) => {
                        let body = &buffer[start + FRAME_HEADER_SIZE..start + len];
                        let reply = Response::decode(&header, body)
                            .map_err(|e| ClientError::Protocol(e.to_string()));
                        let sender = lock(&self.pending)
                            .as_mut()
                            .and_then(|pending| pending.remove(&header.request_id));
                        // A reply nobody waits for belongs to a request that timed out; one
                        // to request 0 (never sent) says why the server closes the connection.
                        match (sender, reply) {
                            (Some(sender), reply) => drop(sender.send(reply)),
                            (None, Ok(Response::Error { message, .. }))
                                if header.request_id == 0 =>
                            {
                                return (
                                    format!("the server closed the connection: {message}"),
                                    false,
                                )
                            }
                            _ => {}
                        }
                        start += len;
                    }
                    Ok(Decoded::Incomplete { .. }) => break,
                    Err(e) => return (format!("undecodable reply: {e}"), false),
                }
            }
            buffer.drain(..start);
            start = 0;
            match self.link.read(stream, &mut chunk) {
                Ok(0) => return ("server closed the connection".into(), false),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return (format!("TLS: {e}"), matches!(self.link, Link::Tls(_)))
                }
                Err(e) => return (e.to_string(), false),
            }
        }
    }

    /// Marks the connection broken and fails every request in flight; `refused`: as a
    /// protocol error, which is not retried.
    fn fail(&self, reason: &str, refused: bool) {
        *lock(&self.reason) = reason.to_string();
        self.broken.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        for (_, sender) in lock(&self.pending).take().into_iter().flatten() {
            let _ = sender.send(Err(match refused {
                true => ClientError::Protocol(reason.to_string()),
                false => ClientError::Disconnected(reason.to_string()),
            }));
        }
    }
}

/// A request that was sent and whose reply has not been taken yet.
#[must_use = "a Pending does nothing until waited on"]
pub struct Pending {
    request_id: u64,
    receiver: Receiver<Result<Response, ClientError>>,
    connection: Arc<Connection>,
    timeout: Duration,
}

impl Pending {
    /// The reply, if it has arrived already; never blocks. After it returns `Some`, the
    /// Pending is spent and `wait` must not be called.
    pub fn try_wait(&mut self) -> Option<Result<Response, ClientError>> {
        match self.receiver.try_recv() {
            Ok(Ok(Response::Error { code, message })) => {
                Some(Err(ClientError::Server { code, message }))
            }
            Ok(result) => Some(result),
            Err(_) => None,
        }
    }

    /// Waits for the reply. A server error reply becomes `ClientError::Server`.
    pub fn wait(self) -> Result<Response, ClientError> {
        match self.receiver.recv_timeout(self.timeout) {
            Ok(Ok(Response::Error { code, message })) => Err(ClientError::Server { code, message }),
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(pending) = lock(&self.connection.pending).as_mut() {
                    pending.remove(&self.request_id);
                }
                Err(ClientError::Timeout(self.timeout))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(ClientError::Disconnected("reply channel closed".into()))
            }
        }
    }
}

struct State {
    connection: Option<Arc<Connection>>,
    /// When the last connection broke or could not be made, and why.
    last_failure: Option<Instant>,
    last_reason: String,
    /// The address in `Client::addrs` to try first.
    current: usize,
}

/// The first pause before a request refused with NO_QUORUM or NOT_LEADER is sent again; it
/// doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(320);
/// Least time between two lookups of the leaders (INFO), after one was found stale.
const ROUTES_REFRESH_MIN: Duration = Duration::from_millis(100);
/// How often a client without routes (INFO gave none, or their node went away) asks again.
const ROUTES_RETRY: Duration = Duration::from_secs(1);

/// A cluster's leaders as last learned, and connections to the nodes that lead.
#[derive(Default)]
struct Routing {
    routes: Option<Routes>,
    /// When the routes were last looked up; None: look them up before the next request.
    looked_up: Option<Instant>,
    /// Connections to leaders other than the main connection's node, by address.
    connections: HashMap<String, Arc<Connection>>,
}

/// A connection to one kvsd. See the module documentation.
pub struct Client {
    addr: String,
    /// The nodes `addr` lists.
    addrs: Vec<String>,
    options: ClientOptions,
    state: Mutex<State>,
    next_request_id: AtomicU64,
    /// Set when `addrs` lists several nodes: single-key requests go to their leaders.
    routing: Option<Mutex<Routing>>,
    session: Mutex<Session>,
}

impl Client {
    /// Connects with default options.
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default())
    }

    pub fn connect_with(addr: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let addrs: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Connect {
                addr: addr.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"),
            });
        }
        let (connection, current) = Client::open_any(&addrs, 0, &options)?;
        let routing = (addrs.len() > 1).then(|| Mutex::new(Routing::default()));
        Ok(Client {
            addr: addr.to_string(),
            addrs,
            options,
            state: Mutex::new(State {
                connection: Some(connection),
                last_failure: None,
                last_reason: String::new(),
                current,
            }),
            next_request_id: AtomicU64::new(1),
            routing,
            session: Mutex::new(Session::new()),
        })
    }

    /// Connects to the first of `addrs`, from `first` on and around, that takes the
    /// connection; returns it and its place.
    fn open_any(
        addrs: &[String],
        first: usize,
        options: &ClientOptions,
    ) -> Result<(Arc<Connection>, usize), ClientError> {
        let mut last_error = None;
        for step in 0..addrs.len() {
            let at = (first + step) % addrs.len();
            match Connection::open(&addrs[at], options) {
                Ok(connection) => return Ok((connection, at)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one address was tried"))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut state = lock(&self.state);
        if let Some(connection) = &state.connection {
            if !connection.broken.load(Ordering::SeqCst) {
                return Ok(Arc::clone(connection));
            }
            let reason = lock(&connection.reason).clone();
            state.last_reason = reason;
            state.connection = None;
            state.last_failure = Some(Instant::now());
        }
        if let Some(at) = state.last_failure {
            if at.elapsed() < self.options.reconnect_backoff {
                return Err(ClientError::Disconnected(format!(
                    "not connected ({}); reconnecting soon",
                    state.last_reason
                )));
            }
        }
        // The node that went away is tried last.
        let first = (state.current + 1) % self.addrs.len();
        match Client::open_any(&self.addrs, first, &self.options) {
            Ok((connection, at)) => {
                state.connection = Some(Arc::clone(&connection));
                state.last_failure = None;
                state.current = at;
                Ok(connection)
            }
            Err(e) => {
                state.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Sends every request in one write and returns their pending replies in order.
    pub fn submit_many(&self, requests: &[Request]) -> Result<Vec<Pending>, ClientError> {
        let connection = self.connection()?;
        self.submit_on(connection, requests)
    }

    fn submit_on(
        &self,
        connection: Arc<Connection>,
        requests: &[Request],
    ) -> Result<Vec<Pending>, ClientError> {
        for request in requests {
            request.validate()?;
        }
        let mut bytes = Vec::new();
        let mut pendings = Vec::with_capacity(requests.len());
        {
            let mut pending = lock(&connection.pending);
            let Some(pending) = pending.as_mut() else {
                return Err(ClientError::Disconnected("connection broke".into()));
            };
            for request in requests {
                let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
                let (sender, receiver) = sync_channel(1);
                pending.insert(request_id, sender);
                request.encode(request_id, &mut bytes);
                pendings.push(Pending {
                    request_id,
                    receiver,
                    connection: Arc::clone(&connection),
                    timeout: self.options.request_timeout,
                });
            }
        }
        let written = connection
            .link
            .write_all(&mut lock(&connection.writer), &bytes);
        if let Err(e) = written {
            connection.fail(&format!("write failed: {e}"), false);
        }
        Ok(pendings)
    }

    /// Sends one request; the reply is taken with [`Pending::wait`].
    pub fn submit(&self, request: &Request) -> Result<Pending, ClientError> {
        let mut pendings = self.submit_many(std::slice::from_ref(request))?;
        Ok(pendings.remove(0))
    }

    /// Sends a request and waits for its reply. A refusal that surely did nothing while a
    /// cluster has no leader for the shard (NO_QUORUM, NOT_LEADER) is retried after a
    /// pause, until the request timeout has passed. A write goes as a ONCE (unless
    /// `write_once` is off), and is also sent again when its outcome is unknown (the
    /// connection broke, or the server timed out), since the shard applies it once; so is
    /// a read, which changes nothing.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        if !(self.options.write_once && request.may_be_once()) {
            return self.call_as(request, request);
        }
        let (session, seq, acked_below) = lock(&self.session).begin();
        let once = Request::Once {
            session,
            seq,
            acked_below,
            request: Box::new(request.clone()),
        };
        let result = self.call_as(request, &once);
        lock(&self.session).end(seq);
        result
    }

    /// [`Client::call`], sending `sent` (`request` itself, or `request` in a ONCE).
    fn call_as(&self, request: &Request, sent: &Request) -> Result<Response, ClientError> {
        let started = Instant::now();
        let mut pause = RETRY_PAUSE;
        // A ONCE, or a read: sending it again cannot apply anything twice.
        let idempotent = matches!(
            sent,
            Request::Once { .. }
                | Request::Ping
                | Request::Get { .. }
                | Request::GetStale { .. }
                | Request::MGet { .. }
                | Request::Scan { .. }
                | Request::Info
        );
        // Whether an earlier attempt may have taken effect: then a later refusal that says
        // "surely not done" is about that attempt only.
        let mut uncertain = false;
        loop {
            let result = match self.leader_connection(request) {
                Some((addr, connection)) => {
                    let result = self
                        .submit_on(connection, std::slice::from_ref(sent))
                        .and_then(|mut pendings| pendings.remove(0).wait());
                    if matches!(
                        result,
                        Err(ClientError::Disconnected(_) | ClientError::Connect { .. })
                    ) {
                        // That node went away: the next request asks the main connection.
                        self.forget_leaders(Some(&addr));
                    }
                    result
                }
                None => self.submit(sent).and_then(Pending::wait),
            };
            let retry = match &result {
                Err(ClientError::Server {
                    code: ErrorCode::NoQuorum | ErrorCode::NotLeader,
                    ..
                }) => true,
                // The outcome is unknown: sent again, a ONCE is still applied once.
                Err(
                    ClientError::Disconnected(_)
                    | ClientError::Connect { .. }
                    | ClientError::Timeout(_)
                    | ClientError::Server {
                        code: ErrorCode::Timeout,
                        ..
                    },
                ) => idempotent,
                _ => false,
            };
            if !retry || started.elapsed() + pause >= self.options.request_timeout {
                return match result {
                    Err(
                        e @ (ClientError::Connect { .. }
                        | ClientError::Server {
                            code: ErrorCode::NoQuorum | ErrorCode::NotLeader,
                            ..
                        }),
                    ) if uncertain => Err(ClientError::Disconnected(format!(
                        "{e}, after an attempt whose outcome is unknown"
                    ))),
                    result => result,
                };
            }
            uncertain |= !matches!(
                result,
                Err(ClientError::Connect { .. }
                    | ClientError::Server {
                        code: ErrorCode::NoQuorum | ErrorCode::NotLeader,
                        ..
                    })
            );
            self.forget_leaders(None);
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    /// The connection to the leader of `request`'s shard, when this client routes (it was
    /// given several nodes), the request names one key, and the leader is known and is not
    /// the main connection's node.
    fn leader_connection(&self, request: &Request) -> Option<(String, Arc<Connection>)> {
        let routing = self.routing.as_ref()?;
        let key = match request {
            Request::Get { key }
            | Request::Put { key, .. }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key,
            _ => return None,
        };
        let stale = {
            let routing = lock(routing);
            match routing.looked_up {
                None => true,
                // No routes (a node went away, or INFO had none): look again, not often.
                Some(at) => routing.routes.is_none() && at.elapsed() >= ROUTES_RETRY,
            }
        };
        if stale {
            // Learned outside the routing lock: INFO is a request of its own.
            let routes = match self.submit(&Request::Info).and_then(Pending::wait) {
                Ok(Response::Info(info)) => Routes::from_info(&info),
                _ => None,
            };
            let mut routing = lock(routing);
            routing.routes = routes;
            routing.looked_up = Some(Instant::now());
        }
        let main = {
            let state = lock(&self.state);
            // Requests submitted on the main connection and not answered yet come first: a
            // request sent elsewhere could overtake them.
            if let Some(connection) = &state.connection {
                if lock(&connection.pending)
                    .as_ref()
                    .is_some_and(|pending| !pending.is_empty())
                {
                    return None;
                }
            }
            self.addrs[state.current].clone()
        };
        let mut routing = lock(routing);
        let addr = routing.routes.as_ref()?.leader_for(key)?.to_string();
        if addr == main {
            return None;
        }
        if let Some(connection) = routing.connections.get(&addr) {
            if !connection.broken.load(Ordering::SeqCst) {
                return Some((addr, Arc::clone(connection)));
            }
        }
        match Connection::open(&addr, &self.options) {
            Ok(connection) => {
                routing
                    .connections
                    .insert(addr.clone(), Arc::clone(&connection));
                Some((addr, connection))
            }
            Err(_) => {
                // Unreachable from here (the address it advertises may not be one this
                // client can reach): the main connection forwards instead, and the routes
                // are looked up again only after a pause, not on every request.
                routing.connections.remove(&addr);
                routing.routes = None;
                None
            }
        }
    }

    /// Marks the leaders stale (they are looked up again, at most every
    /// [`ROUTES_REFRESH_MIN`]) and drops the connection to `addr`, when given.
    fn forget_leaders(&self, addr: Option<&str>) {
        let Some(routing) = self.routing.as_ref() else {
            return;
        };
        let mut routing = lock(routing);
        if let Some(addr) = addr {
            routing.connections.remove(addr);
            routing.routes = None;
        }
        if routing
            .looked_up
            .is_some_and(|at| at.elapsed() >= ROUTES_REFRESH_MIN)
        {
            routing.looked_up = None;
        }
    }

    fn unexpected(response: Response) -> ClientError {
        ClientError::Protocol(format!("unexpected reply {response:?}"))
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The value and version of `key`, or `None` when it does not exist.
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        match self.call(&Request::Get { key: key.to_vec() }) {
            Ok(Response::Value { version, value }) => Ok(Some((version, value))),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Ok(other) => Err(Self::unexpected(other)),
            Err(e) => Err(e),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.get_versioned(key)?.map(|(_, value)| value))
    }

    /// `key`'s value as the replica of the node this client is connected to holds it,
    /// without asking the shard's leader: in a cluster it may miss writes already
    /// acknowledged, and it is answered while that node cannot reach a majority.
    pub fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.call(&Request::GetStale { key: key.to_vec() }) {
            Ok(Response::Value { value, .. }) => Ok(Some(value)),
            Err(ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            }) => Ok(None),
            Ok(other) => Err(Self::unexpected(other)),
            Err(e) => Err(e),
        }
    }

    /// Makes `node` the preferred leader of `shard` (kept in the shard's replicated state);
    /// the current leader hands leadership over once `node` has caught up. Returns once the
    /// preference is durable on a majority, not once leadership moved.
    pub fn transfer_leader(&self, shard: u32, node: u64) -> Result<(), ClientError> {
        match self.call(&Request::TransferLeader { shard, node })? {
            Response::Written { .. } => Ok(()),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Writes `value` under `key`; returns the new version once the write is durable.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        match self.call(&Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })? {
            Response::Written { version } => Ok(version),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        match self.call(&Request::Delete { key: key.to_vec() })? {
            Response::Deleted { existed } => Ok(existed),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Compare-and-set: writes (or deletes, with `None`) only when the key's version is
    /// `expected_version` (0: the key must not exist). Fails with VERSION_MISMATCH otherwise.
    pub fn cas(
        &self,
        key: &[u8],
        expected_version: u64,
        value: Option<&[u8]>,
    ) -> Result<u64, ClientError> {
        let request = Request::Cas {
            key: key.to_vec(),
            expected_version,
            value: value.map(<[u8]>::to_vec),
        };
        match self.call(&request)? {
            Response::Written { version } => Ok(version),
            other => Err(Self::unexpected(other)),
        }
    }

    pub fn mget(&self, keys: &[&[u8]]) -> Result<Vec<Option<VersionedValue>>, ClientError> {
        let keys = keys.iter().map(|k| k.to_vec()).collect();
        match self.call(&Request::MGet { keys })? {
            Response::Values(values) => Ok(values),
            other => Err(Self::unexpected(other)),
        }
    }

    pub fn mput(&self, pairs: &[(&[u8], &[u8])]) -> Result<Vec<u64>, ClientError> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        match self.call(&Request::MPut { pairs })? {
            Response::Versions(versions) => Ok(versions),
            other => Err(Self::unexpected(other)),
        }
    }

    /// Up to `limit` pairs with keys in `[start, end)`, in key order, and where to continue.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        let request = Request::Scan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            limit,
        };
        match self.call(&request)? {
            Response::Scanned { pairs, next } => Ok((pairs, next)),
            other => Err(Self::unexpected(other)),
        }
    }

    /// The server's INFO document (JSON).
    pub fn info(&self) -> Result<String, ClientError> {
        match self.call(&Request::Info)? {
            Response::Info(json) => Ok(json),
            other => Err(Self::unexpected(other)),
        }
    }

    // ---- documents (`docs/documents.md`) ----

    /// Runs a document command (such as `{"find": "people", "filter": {...}}`) and returns
    /// its reply. Fields keep their order both ways.
    pub fn document(&self, command: &JsonValue) -> Result<JsonValue, ClientError> {
        let request = Request::Document {
            command: command.to_string().into_bytes(),
        };
        match self.call(&request)? {
            Response::Document(text) => serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("document reply is not JSON: {e}"))),
            other => Err(Self::unexpected(other)),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(connection) = lock(&self.state).connection.take() {
            connection.fail("client dropped", false);
        }
    }
}
