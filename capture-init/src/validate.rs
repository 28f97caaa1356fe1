//! `--run-validation`: prove that redirection works with real connections, as Istio's
//! `istio-validation` container does, and beyond it.
//!
//! - **Inbound/hairpin** (Istio's probe): the proxy's own user connects to the inbound
//!   passthrough address (`127.0.0.6` / `::6`) on the probe port. Nothing listens there; the
//!   connection can only arrive, at the inbound port, through the hairpin rule.
//! - **Outbound** (Linkerd's idea): another user connects to a documentation address
//!   (RFC 5737 / RFC 3849) that outbound capture covers; it can only arrive, at the outbound
//!   port, through the outbound redirect. Runs when this process may switch users (root).
//!
//! Each probe sends a random token that must come back from the expected listener, with the
//! original destination it read through `SO_ORIGINAL_DST`. Both families are probed when IPv6
//! is on.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use capture_core::{CaptureSpec, Family, OutboundCidrs, Owner, Port, original_dst};

use crate::cli::Args;

/// Why validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// A listener could not be opened.
    #[error("iptables validation failed: cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A probe did not arrive where it should within the timeout.
    #[error(
        "iptables validation failed; workload is not ready for capture: {probe} probe to {target} did not reach the proxy's {port} listener within {timeout:?} ({last})"
    )]
    Probe {
        /// Which probe.
        probe: &'static str,
        /// Where it connected.
        target: SocketAddr,
        /// The listener it should have reached.
        port: u16,
        /// The timeout.
        timeout: Duration,
        /// The last thing that went wrong.
        last: String,
    },
    /// The proxy's identity could not be assumed.
    #[error("iptables validation failed: cannot run the probe as uid {uid} gid {gid}")]
    Identity {
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the probes for every family of `spec`.
///
/// # Errors
/// The first probe that fails.
pub fn run(spec: &CaptureSpec, args: &Args) -> Result<(), ValidationError> {
    let probe_port: Port = args
        .iptables_probe_port
        .parse()
        .expect("checked when parsing flags");
    let deadline = Instant::now() + args.probe_timeout;
    let proxy = proxy_identity(spec);
    let root = nix::unistd::geteuid().is_root();
    for &family in spec.families() {
        let loopback = family.loopback();
        let inbound = Listener::open(SocketAddr::new(loopback, spec.proxy.inbound.get()))?;
        let outbound = Listener::open(SocketAddr::new(loopback, spec.proxy.outbound.get()))?;
        let passthrough = SocketAddr::new(capture_core::passthrough_source(family).addr(), probe_port.get());
        // As root, become the proxy for the probe; otherwise we are the proxy (Istio runs the
        // validation container as uid 1337).
        let as_proxy = if root { proxy } else { None };
        if probe(
            "hairpin",
            passthrough,
            &inbound,
            as_proxy,
            true,
            deadline,
            args.probe_timeout,
        )? == Probed::NoRoute
        {
            tracing::warn!("no route to {passthrough}; {family} hairpin capture not validated");
        }
        if root && let Some(target) = outbound_target(spec, family, probe_port) {
            // nobody/nogroup: an identity that is neither root nor the proxy.
            let app = Some((65534, 65534));
            if probe(
                "outbound",
                target,
                &outbound,
                app,
                false,
                deadline,
                args.probe_timeout,
            )? == Probed::NoRoute
            {
                tracing::warn!("no route to {target}; {family} outbound capture not validated");
            }
        }
    }
    Ok(())
}

/// The proxy's first numeric uid and gid (names resolved), if it can be determined.
fn proxy_identity(spec: &CaptureSpec) -> Option<(u32, u32)> {
    let uid = match spec.owner.uids.first()? {
        Owner::Id(id) => *id,
        Owner::Name(name) => nix::unistd::User::from_name(name).ok()??.uid.as_raw(),
    };
    let gid = match spec.owner.gids.first()? {
        Owner::Id(id) => *id,
        Owner::Name(name) => nix::unistd::Group::from_name(name).ok()??.gid.as_raw(),
    };
    Some((uid, gid))
}

/// A documentation address outbound capture covers and no exclusion spares, if any.
fn outbound_target(spec: &CaptureSpec, family: Family, port: Port) -> Option<SocketAddr> {
    let out = &spec.outbound;
    if out.exclude_ports.iter().any(|p| p.contains(port.get())) {
        return None;
    }
    let candidates: Vec<IpAddr> = match family {
        Family::V4 => [[192, 0, 2, 1], [198, 51, 100, 1], [203, 0, 113, 1]]
            .map(|o| IpAddr::V4(o.into()))
            .to_vec(),
        Family::V6 => vec![IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))],
    };
    let captured = |a: &IpAddr| match &out.include {
        OutboundCidrs::All => true,
        OutboundCidrs::Only(cidrs) => cidrs.iter().any(|c| c.contains(a)),
        OutboundCidrs::Off => false,
    };
    // Istio's order: excluded CIDRs return first, then -q ports and -i ranges redirect.
    let port_included = out.include_ports.iter().any(|p| p.contains(port.get()));
    candidates
        .into_iter()
        .find(|a| (port_included || captured(a)) && !out.exclude_cidrs.iter().any(|c| c.contains(a)))
        .map(|a| SocketAddr::new(a, port.get()))
}

/// A listener answering each connection with the original destination and the token it read.
struct Listener {
    port: u16,
}

impl Listener {
    fn open(addr: SocketAddr) -> Result<Self, ValidationError> {
        let listener = TcpListener::bind(addr).map_err(|source| ValidationError::Listen { addr, source })?;
        // The thread ends with the process; capture-init exits right after validating.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream);
            }
        });
        Ok(Self { port: addr.port() })
    }
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let dst = original_dst(&stream)?;
    let mut token = String::new();
    BufReader::new(&stream).read_line(&mut token)?;
    let port = stream.local_addr()?.port();
    writeln!(stream, "{port} {dst} {}", token.trim())?;
    stream.shutdown(Shutdown::Write)
}

/// Connects to `target` (as `identity`, if given) until the token comes back from `listener`
/// with `target` as the original destination, or the deadline passes.
fn probe(
    name: &'static str,
    target: SocketAddr,
    listener: &Listener,
    identity: Option<(u32, u32)>,
    from_loopback: bool,
    deadline: Instant,
    timeout: Duration,
) -> Result<Probed, ValidationError> {
    let token = format!("{:016x}", random_u64());
    let expected = format!("{} {target} {token}", listener.port);
    let mut last: String;
    loop {
        let attempt = {
            let token = token.clone();
            thread::spawn(move || -> Result<String, Attempt> {
                if let Some((uid, gid)) = identity {
                    become_user(uid, gid).map_err(Attempt::Identity)?;
                }
                let mut stream = if from_loopback {
                    connect_from_loopback(target, Duration::from_millis(500))?
                } else {
                    TcpStream::connect_timeout(&target, Duration::from_millis(500))?
                };
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                writeln!(stream, "{token}")?;
                let mut reply = String::new();
                BufReader::new(&stream).read_line(&mut reply)?;
                Ok(reply.trim().to_owned())
            })
            .join()
        };
        match attempt {
            Ok(Ok(reply)) if reply == expected => return Ok(Probed::Passed),
            Ok(Ok(reply)) => last = format!("got {reply:?}, expected {expected:?}"),
            Ok(Err(Attempt::Identity(source))) => {
                let (uid, gid) = identity.unwrap_or_default();
                return Err(ValidationError::Identity { uid, gid, source });
            }
            // No route at all: this namespace cannot reach the address, so the probe says
            // nothing about capture (a pod always has a default route).
            Ok(Err(Attempt::Io(e))) if e.kind() == std::io::ErrorKind::NetworkUnreachable => {
                return Ok(Probed::NoRoute);
            }
            Ok(Err(Attempt::Io(e))) => last = e.to_string(),
            Err(_) => last = "probe thread panicked".to_owned(),
        }
        if Instant::now() >= deadline {
            return Err(ValidationError::Probe {
                probe: name,
                target,
                port: listener.port,
                timeout,
                last,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

enum Attempt {
    Identity(std::io::Error),
    Io(std::io::Error),
}

impl From<std::io::Error> for Attempt {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// How a probe ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probed {
    /// The token came back from the right listener with the right original destination.
    Passed,
    /// There is no route to the probe's address, so it could not be sent.
    NoRoute,
}

/// Connects from the loopback address of `target`'s family, as Istio's probe does: left to
/// itself the kernel would pick `::6` as the source for `::6`, and the inbound passthrough rule
/// (`-s ::6/128 -j RETURN`) would then spare the probe.
fn connect_from_loopback(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, connect, setsockopt, socket,
        sockopt,
    };
    let (family, source) = match target {
        SocketAddr::V4(_) => (
            AddressFamily::Inet,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        ),
        SocketAddr::V6(_) => (
            AddressFamily::Inet6,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        ),
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // A blocking connect() gives up after SO_SNDTIMEO.
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    match (source, target) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(src))?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(dst))?;
        }
        (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(src))?;
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(dst))?;
        }
        _ => unreachable!("source follows the target's family"),
    }
    Ok(TcpStream::from(fd))
}

/// Switches the calling thread (only) to `uid`/`gid` with no supplementary groups. The raw
/// system calls are per-thread; glibc's wrappers would switch every thread of the process.
fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    for (call, args) in [
        (libc::SYS_setgroups, [0, 0, 0]),
        (libc::SYS_setresgid, [gid, gid, gid].map(libc::c_long::from)),
        (libc::SYS_setresuid, [uid, uid, uid].map(libc::c_long::from)),
    ] {
        // SAFETY: plain system calls on integer arguments (setgroups with size 0 ignores the
        // list pointer); they only change this thread's credentials.
        let rc = unsafe { libc::syscall(call, args[0], args[1], args[2]) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return u64::from(nanos.subsec_nanos()) ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(bytes)
}
