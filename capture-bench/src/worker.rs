//! One measurement, run as a process of its own inside the pod namespace (and, for the eBPF
//! backend, inside the bench's cgroup): the proxy, then the clients, then one JSON line on
//! stdout.
//!
//! The proxy listens where capture redirects (`0.0.0.0:15001`) and on a plain listener
//! (`127.0.0.1:15010`, the explicit mode's). For every captured connection it asks
//! [`capture_core::original_dst()`] where the client was going and counts a mismatch unless
//! that is the address the measurement targets; then it connects there and relays both ways.
//! Its threads run as uid and gid 1337, the proxy's, whose connections capture leaves alone.
//! The clients run as uid and gid 1000, an application's.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use capture_e2e::{APP_UID, OUTBOUND_PORT, PROXY_UID, assume_identity};

/// The proxy's plain listener, which the explicit mode's clients connect to.
pub const EXPLICIT_PORT: u16 = 15010;
/// Threads accepting on each proxy listener; each serves one connection at a time.
const PROXY_THREADS: usize = 6;
/// A connect or a reply slower than this is an error.
const PATIENCE: Duration = Duration::from_secs(5);
/// The stream client's write size.
const CHUNK: usize = 128 * 1024;
/// A client gives up after this many failed connections.
const MAX_ERRORS: u64 = 50;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Connections per second, 1 client: connect, 1-byte request and response, close.
    Cps1,
    /// The same with 4 clients at once.
    Cps4,
    /// 1-byte round trips on one connection: median and 99th percentile.
    Latency,
    /// Bytes written on one connection to the sink.
    Stream,
}

impl Metric {
    /// The name in the JSON and tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cps1 => "cps1",
            Metric::Cps4 => "cps4",
            Metric::Latency => "latency",
            Metric::Stream => "stream",
        }
    }

    /// The unit of the reported value.
    #[must_use]
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Cps1 | Metric::Cps4 => "conn/s",
            Metric::Latency => "us (p50)",
            Metric::Stream => "MB/s",
        }
    }
}

/// `capture-bench worker`: one measurement in the namespace it was started in.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// What to measure.
    #[arg(long, value_enum)]
    pub metric: Metric,
    /// The server's address for this metric (echo or sink).
    #[arg(long)]
    pub target: SocketAddr,
    /// The original destination every captured connection must have.
    #[arg(long)]
    pub expect: SocketAddr,
    /// The clients connect to the proxy's plain listener instead of the server.
    #[arg(long)]
    pub explicit: bool,
    /// Seconds to measure for.
    #[arg(long, default_value_t = 1.0)]
    pub duration: f64,
    /// A fixed amount of work instead of a duration: connections (cps), round trips (latency)
    /// or chunks of 128 KiB (stream).
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    explicit: AtomicU64,
    mismatches: AtomicU64,
    /// The first mismatched original destination (or the error asking for it).
    first_mismatch: std::sync::Mutex<Option<String>>,
    proxy_errors: AtomicU64,
}

/// Runs the measurement and prints its JSON line.
///
/// # Errors
///
/// When the proxy's listeners cannot be bound or the measurement cannot start.
pub fn run(args: &WorkerArgs) -> io::Result<()> {
    let counters = Arc::new(Counters::default());
    start_proxy(args.expect, args.target, &counters)?;
    let dst = if args.explicit {
        SocketAddr::from((Ipv4Addr::LOCALHOST, EXPLICIT_PORT))
    } else {
        args.target
    };
    let budget = Budget {
        deadline: Duration::from_secs_f64(args.duration),
        count: args.count,
    };
    let outcome = match args.metric {
        Metric::Cps1 => cps(dst, 1, budget),
        Metric::Cps4 => cps(dst, 4, budget),
        Metric::Latency => latency(dst, budget),
        Metric::Stream => stream(dst, budget),
    };
    let line = serde_json::json!({
        "value": outcome.value,
        "cpu_us": cpu_time_us(),
        "p99": outcome.p99,
        "connections": outcome.connections,
        "errors": outcome.errors,
        "error": outcome.error,
        "captured": counters.captured.load(Ordering::SeqCst),
        "explicit": counters.explicit.load(Ordering::SeqCst),
        "mismatches": counters.mismatches.load(Ordering::SeqCst),
        "first_mismatch": *counters.first_mismatch.lock().unwrap_or_else(PoisonError::into_inner),
        "proxy_errors": counters.proxy_errors.load(Ordering::SeqCst),
    });
    println!("{line}");
    Ok(())
}

/// The CPU time this process's threads (the clients, the proxy, and the kernel's work done in
/// their context: loopback and veth receive included) have used so far, in µs, from the
/// scheduler's own clock (`CLOCK_PROCESS_CPUTIME_ID`, threads that ended included): unlike a
/// rate, the machine's other load changes it little.
pub fn cpu_time_us() -> Option<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut t) } != 0 {
        return None;
    }
    Some(u64::try_from(t.tv_sec).ok()? * 1_000_000 + u64::try_from(t.tv_nsec).ok()? / 1_000)
}

fn start_proxy(expect: SocketAddr, upstream: SocketAddr, counters: &Arc<Counters>) -> io::Result<()> {
    let captured = Arc::new(TcpListener::bind((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT))?);
    let plain = Arc::new(TcpListener::bind((Ipv4Addr::LOCALHOST, EXPLICIT_PORT))?);
    for explicit in [false, true] {
        for _ in 0..PROXY_THREADS {
            let listener = Arc::clone(if explicit { &plain } else { &captured });
            let counters = Arc::clone(counters);
            thread::spawn(move || {
                if assume_identity(PROXY_UID, PROXY_UID).is_err() {
                    counters.proxy_errors.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                while let Ok((client, _)) = listener.accept() {
                    let served = if explicit {
                        counters.explicit.fetch_add(1, Ordering::SeqCst);
                        forward(client, upstream)
                    } else {
                        captured_connection(client, expect, &counters)
                    };
                    if served.is_err() {
                        counters.proxy_errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    }
    Ok(())
}

/// The check the bench exists to make: a captured connection's original destination is the
/// server's address and port. A mismatch is counted and the connection closed.
fn captured_connection(client: TcpStream, expect: SocketAddr, counters: &Counters) -> io::Result<()> {
    counters.captured.fetch_add(1, Ordering::SeqCst);
    let dst = capture_core::original_dst(&client).map(|d| SocketAddr::new(d.ip().to_canonical(), d.port()));
    if dst.as_ref().ok() != Some(&expect) {
        let seen = dst.map_or_else(|e| format!("none ({e})"), |d| d.to_string());
        let mut first = counters
            .first_mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert(seen);
        counters.mismatches.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    forward(client, expect)
}

fn forward(client: TcpStream, dst: SocketAddr) -> io::Result<()> {
    let upstream = TcpStream::connect_timeout(&dst, PATIENCE)?;
    relay(&client, &upstream)
}

/// Copies bytes both ways until both sides have sent EOF, passing each EOF on.
fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let streams = [a, b];
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 * 1024];
    while open[0] || open[1] {
        let mut fds = [0, 1].map(|i| libc::pollfd {
            fd: if open[i] { streams[i].as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = i32::try_from(PATIENCE.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is an array of two initialised pollfd that outlives the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        match ready {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => return Err(io::ErrorKind::TimedOut.into()),
            _ => {}
        }
        for i in 0..2 {
            if !open[i] || fds[i].revents == 0 {
                continue;
            }
            let n = (&mut &*streams[i]).read(&mut buf)?;
            if n == 0 {
                open[i] = false;
                let _ = streams[1 - i].shutdown(Shutdown::Write);
            } else {
                (&mut &*streams[1 - i]).write_all(&buf[..n])?;
            }
        }
    }
    Ok(())
}

/// How long, or how much, a client works.
#[derive(Debug, Clone, Copy)]
struct Budget {
    deadline: Duration,
    count: Option<u64>,
}

impl Budget {
    fn done(&self, start: Instant, n: u64) -> bool {
        match self.count {
            Some(count) => n >= count,
            None => start.elapsed() >= self.deadline,
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    value: f64,
    p99: Option<f64>,
    /// Connections the clients opened (successful and failed).
    connections: u64,
    errors: u64,
    error: Option<String>,
}

fn client_identity() -> io::Result<()> {
    assume_identity(APP_UID, APP_UID)
}

fn connect(dst: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&dst, PATIENCE)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    Ok(stream)
}

fn request_response(dst: SocketAddr) -> io::Result<()> {
    let mut stream = connect(dst)?;
    stream.write_all(&[1])?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    if reply != [1] {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong reply"));
    }
    Ok(())
}

fn cps(dst: SocketAddr, clients: u64, budget: Budget) -> Outcome {
    let stop = AtomicBool::new(false);
    let start_line = Barrier::new(usize::try_from(clients).unwrap_or(1) + 1);
    let per_client = Budget {
        count: budget.count.map(|c| c.div_ceil(clients)),
        ..budget
    };
    let (results, elapsed) = thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let identity = client_identity();
                    start_line.wait();
                    identity?;
                    let start = Instant::now();
                    let (mut ok, mut errors, mut last) = (0u64, 0u64, None);
                    while !stop.load(Ordering::Relaxed) && !per_client.done(start, ok + errors) {
                        match request_response(dst) {
                            Ok(()) => ok += 1,
                            Err(e) => {
                                errors += 1;
                                last = Some(e.to_string());
                                if errors >= MAX_ERRORS {
                                    break;
                                }
                            }
                        }
                    }
                    Ok::<_, io::Error>((ok, errors, last))
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a client panicked")))
            })
            .collect();
        (results, start.elapsed())
    });
    let mut outcome = Outcome::default();
    let mut ok = 0;
    for result in results {
        match result {
            Ok((n, errors, last)) => {
                ok += n;
                outcome.connections += n + errors;
                outcome.errors += errors;
                outcome.error = outcome.error.or(last);
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.error = Some(format!("client identity: {e}"));
            }
        }
    }
    outcome.value = ok as f64 / elapsed.as_secs_f64();
    outcome
}

/// Runs `f` on a thread of its own that has taken the application's identity.
fn as_client<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                client_identity()?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the client panicked")))
    })
}

fn failed(connections: u64, e: &io::Error) -> Outcome {
    Outcome {
        connections,
        errors: 1,
        error: Some(e.to_string()),
        ..Outcome::default()
    }
}

fn latency(dst: SocketAddr, budget: Budget) -> Outcome {
    let rtts = as_client(|| {
        let mut stream = connect(dst)?;
        let mut rtts = Vec::with_capacity(100_000);
        let mut byte = [1u8];
        let start = Instant::now();
        while !budget.done(start, rtts.len() as u64) {
            let t = Instant::now();
            stream.write_all(&byte)?;
            stream.read_exact(&mut byte)?;
            rtts.push(t.elapsed());
        }
        Ok(rtts)
    });
    match rtts {
        Ok(mut rtts) if !rtts.is_empty() => {
            rtts.sort_unstable();
            let at = |q: f64| {
                let i = ((rtts.len() - 1) as f64 * q).round() as usize;
                rtts[i].as_secs_f64() * 1e6
            };
            Outcome {
                value: at(0.5),
                p99: Some(at(0.99)),
                connections: 1,
                ..Outcome::default()
            }
        }
        Ok(_) => failed(1, &io::Error::other("no round trip")),
        Err(e) => failed(1, &e),
    }
}

fn stream(dst: SocketAddr, budget: Budget) -> Outcome {
    let sent = as_client(|| {
        let mut stream = connect(dst)?;
        let chunk = vec![7u8; CHUNK];
        let start = Instant::now();
        let mut chunks = 0;
        while !budget.done(start, chunks) {
            stream.write_all(&chunk)?;
            chunks += 1;
        }
        stream.shutdown(Shutdown::Write)?;
        let mut total = [0u8; 8];
        stream.read_exact(&mut total)?;
        let elapsed = start.elapsed();
        let sent = chunks * CHUNK as u64;
        if u64::from_le_bytes(total) != sent {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the sink received {} bytes of {sent}", u64::from_le_bytes(total)),
            ));
        }
        Ok(sent as f64 / elapsed.as_secs_f64() / 1e6)
    });
    match sent {
        Ok(value) => Outcome {
            value,
            connections: 1,
            ..Outcome::default()
        },
        Err(e) => failed(1, &e),
    }
}
