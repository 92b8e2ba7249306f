//! A small fault-injecting TCP relay for tests: put it between two real peers (e.g. the
//! proxy and the follower) and delay, stall, blackhole, reset or throttle the link while
//! they talk.
//!
//! ```ignore
//! let follower = RedisServer::start();
//! let relay = FaultRelay::start(&follower.addr());
//! // point the proxy (or a client) at `relay.addr()` instead of `follower.addr()`
//! relay.set(Fault::Stall);
//! // ... assert on the stalled link ...
//! relay.set(Fault::Pass);
//! ```
//!
//! The mode is shared by all connections and applies at once to open ones and new ones.
//! Everything is loopback only, every task stops when the relay is dropped, and no network
//! error panics: a failed read, write or upstream connect just ends that connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest chunk read from (and so forwarded to) either side at once.
const CHUNK: usize = 16 * 1024;
/// Bound on connecting to the target for one accepted connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What the relay does to the link. Changed live with [`FaultRelay::set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything as it comes.
    Pass,
    /// Hold each chunk (and the end-of-stream) this long before forwarding it, in each
    /// direction: a request/reply round trip takes at least twice this.
    Delay(Duration),
    /// Forward nothing (not even a close) but keep both sockets open; forwarding resumes
    /// with the held data when the mode changes (e.g. back to `Pass`).
    Stall,
    /// Data goes nowhere: open connections keep reading both sides and discard what they
    /// read (closes included); new connections are accepted and read but never connected
    /// upstream, for as long as they live, even if the mode changes later.
    Blackhole,
    /// Every open connection is closed with a RST on both sides (`SO_LINGER` 0, then
    /// dropped), and so is each new one right after it is accepted.
    Reset,
    /// Forward at most this many bytes per second, per connection and direction. `0`
    /// forwards nothing (like `Stall`).
    Throttle(u64),
    /// `Stall` for the connections open when it is set, `Pass` for those accepted while it
    /// is set: an old connection's bytes held back while a new one flows, then released
    /// (the "timed-out batch lands after later ones" race).
    StallExisting,
    /// A long-distance link: each chunk is forwarded this long after it was read, while
    /// later chunks keep being read (unlike `Delay`, which holds one chunk at a time and so
    /// also caps the bandwidth at one chunk per delay). A round trip takes twice this.
    Latency(Duration),
}

/// A TCP relay on `127.0.0.1:<free port>` forwarding every connection to one target.
/// Stops listening and closes every connection (shortly after) when dropped.
pub struct FaultRelay {
    addr: SocketAddr,
    mode: watch::Sender<Fault>,
    open: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl FaultRelay {
    /// Starts relaying to `target` (`"127.0.0.1:port"`, loopback only), in `Fault::Pass`
    /// mode. Must be called inside a tokio runtime; the relay's tasks run on it. Panics if
    /// `target` is not a loopback socket address or no port can be bound (test setup).
    pub fn start(target: &str) -> FaultRelay {
        let target: SocketAddr = target
            .parse()
            .unwrap_or_else(|e| panic!("fault relay target {target:?}: {e}"));
        assert!(
            target.ip().is_loopback(),
            "fault relay target {target} is not loopback"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .unwrap_or_else(|e| panic!("fault relay: cannot listen on 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault relay: no local address: {e}"));
        let (mode, rx) = watch::channel(Fault::Pass);
        let open = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            rx,
            open.clone(),
            cancel.clone(),
        ));
        FaultRelay {
            addr,
            mode,
            open,
            cancel,
        }
    }

    /// `"127.0.0.1:port"` to connect to instead of the target.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Switches the mode for all open and future connections.
    pub fn set(&self, fault: Fault) {
        self.mode.send_if_modified(|m| {
            let changed = *m != fault;
            *m = fault;
            changed
        });
    }

    /// The current mode.
    pub fn mode(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Accepted connections not yet closed (blackholed ones included).
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Counts one open connection while alive.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes `s` with a RST instead of a FIN.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rx: watch::Receiver<Fault>,
    open: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let sock = match accepted {
            Ok((sock, _)) => sock,
            Err(_) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        if *rx.borrow() == Fault::Reset {
            reset(sock);
            continue;
        }
        let guard = OpenGuard::new(open.clone());
        tokio::spawn(serve(sock, target, rx.clone(), cancel.clone(), guard));
    }
}

/// How a connection ends.
enum End {
    /// Plain close (FIN) of whatever is open.
    Close,
    /// RST both sides.
    Reset,
}

async fn serve(
    client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<Fault>,
    cancel: CancellationToken,
    _guard: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    let mode = *rx.borrow_and_update();
    match mode {
        Fault::Reset => return reset(client),
        Fault::Blackhole => return blackhole(client, rx, cancel).await,
        _ => {}
    }
    let upstream = {
        let mut reset_rx = rx.clone();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = reset_rx.wait_for(|f| *f == Fault::Reset) => {
                if r.is_ok() {
                    reset(client);
                }
                return;
            }
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)) => match r {
                Ok(Ok(s)) => s,
                // Target down or not answering: the client sees a reset, as it would
                // connecting to a dead port.
                _ => return reset(client),
            },
        }
    };
    let _ = upstream.set_nodelay(true);
    relay(client, upstream, rx, cancel, mode == Fault::StallExisting).await
}

/// A connection accepted under `Blackhole`: read and discard until the client closes, the
/// mode becomes `Reset`, or the relay stops.
async fn blackhole(
    mut client: TcpStream,
    mut rx: watch::Receiver<Fault>,
    cancel: CancellationToken,
) {
    let end = {
        let drain = async {
            let mut buf = vec![0u8; CHUNK];
            // Ends on EOF or error; cancelled with the select below otherwise.
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => End::Close,
            r = rx.wait_for(|f| *f == Fault::Reset) => {
                if r.is_ok() { End::Reset } else { End::Close }
            }
            _ = drain => End::Close,
        }
    };
    if let End::Reset = end {
        reset(client);
    }
}

async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    rx: watch::Receiver<Fault>,
    cancel: CancellationToken,
    fresh: bool,
) {
    let mut reset_rx = rx.clone();
    let mut up_rx = rx.clone();
    let mut down_rx = rx;
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let both = async {
            tokio::try_join!(
                pump(&mut cr, &mut uw, &mut up_rx, fresh),
                pump(&mut ur, &mut cw, &mut down_rx, fresh),
            )
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => End::Close,
            r = reset_rx.wait_for(|f| *f == Fault::Reset) => {
                if r.is_ok() { End::Reset } else { End::Close }
            }
            r = both => match r {
                Ok(_) => End::Close,
                // One side failed (typically reset by its peer): pass the reset on.
                Err(_) => End::Reset,
            },
        }
    };
    if let End::Reset = end {
        reset(client);
        reset(upstream);
    }
}

/// Copies `src` to `dst` under the current mode until EOF (forwarded as a write shutdown),
/// an I/O error, or the relay stopping (`Err` too). Cancelled by the caller otherwise.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    rx: &mut watch::Receiver<Fault>,
    fresh: bool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut pacer = Pacer::default();
    loop {
        if matches!(*rx.borrow(), Fault::Latency(_)) {
            if latency(src, dst, rx, &mut buf, fresh).await? {
                return Ok(());
            }
            continue;
        }
        let n = src.read(&mut buf).await?;
        deliver(&buf[..n], dst, rx, &mut pacer, fresh).await?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Most chunks held at once under `Latency` (beyond it the relay stops reading, as a full
/// link would).
const MAX_HELD: usize = 4096;

/// Relays under `Latency` until the mode changes (`Ok(false)`, whatever is still held
/// handed to the new mode in order) or the end of the stream was forwarded (`Ok(true)`).
async fn latency<R, W>(
    src: &mut R,
    dst: &mut W,
    rx: &mut watch::Receiver<Fault>,
    buf: &mut [u8],
    fresh: bool,
) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut eof = false;
    loop {
        let Fault::Latency(d) = *rx.borrow_and_update() else {
            let mut pacer = Pacer::default();
            while let Some((_, c)) = held.pop_front() {
                deliver(&c, dst, rx, &mut pacer, fresh).await?;
                if c.is_empty() {
                    return Ok(true);
                }
            }
            return Ok(eof);
        };
        let due = held.front().map(|(t, _)| *t + d);
        let can_read = !eof && held.len() < MAX_HELD;
        tokio::select! {
            r = src.read(buf), if can_read => {
                let n = r?;
                held.push_back((Instant::now(), buf[..n].to_vec()));
                eof = n == 0;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some((_, c)) = held.pop_front() {
                    write(dst, &c, c.is_empty()).await?;
                    if c.is_empty() {
                        return Ok(true);
                    }
                }
            }
            r = changed(rx) => r?,
        }
    }
}

/// Forwards one chunk (an empty one is the end of the stream) under the current mode,
/// re-evaluating whenever the mode changes while the chunk is held. Returns once it is
/// written or dropped.
async fn deliver<W>(
    chunk: &[u8],
    dst: &mut W,
    rx: &mut watch::Receiver<Fault>,
    pacer: &mut Pacer,
    fresh: bool,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let eof = chunk.is_empty();
    let mut rest = chunk;
    loop {
        let mode = match *rx.borrow_and_update() {
            Fault::StallExisting if fresh => Fault::Pass,
            Fault::StallExisting => Fault::Stall,
            m => m,
        };
        if !matches!(mode, Fault::Throttle(_)) {
            pacer.next = None;
        }
        match mode {
            Fault::Pass => return write(dst, rest, eof).await,
            Fault::Blackhole => return Ok(()),
            // `Reset` is acted on by the connection; `Stall` and `Throttle(0)` hold the chunk.
            Fault::Stall | Fault::StallExisting | Fault::Reset | Fault::Throttle(0) => {
                changed(rx).await?
            }
            // A chunk caught by a switch to `Latency` is held like one under `Delay`.
            Fault::Delay(d) | Fault::Latency(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => return write(dst, rest, eof).await,
                    r = changed(rx) => r?,
                }
            }
            Fault::Throttle(bps) => {
                if let Some(next) = pacer.next {
                    let mut woke = false;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => woke = true,
                        r = changed(rx) => r?,
                    }
                    if !woke {
                        continue;
                    }
                }
                if eof {
                    return write(dst, rest, true).await;
                }
                // Slices of ~20 ms worth, so pacing stays smooth at any rate.
                let n = rest.len().min((bps / 50).clamp(1, CHUNK as u64) as usize);
                dst.write_all(&rest[..n]).await?;
                rest = &rest[n..];
                let start = pacer.next.map_or(Instant::now(), |t| t.max(Instant::now()));
                pacer.next = Some(start + Duration::from_secs_f64(n as f64 / bps as f64));
                if rest.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(dst: &mut W, bytes: &[u8], eof: bool) -> io::Result<()> {
    if eof {
        dst.shutdown().await
    } else {
        dst.write_all(bytes).await
    }
}

/// Waits for the next mode change; `Err` once the relay is gone.
async fn changed(rx: &mut watch::Receiver<Fault>) -> io::Result<()> {
    rx.changed()
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::ConnectionAborted, "fault relay stopped"))
}

/// When the next throttled slice may be written.
#[derive(Default)]
struct Pacer {
    next: Option<Instant>,
}
