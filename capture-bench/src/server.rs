//! The server namespace's side: an echo server and a stream sink, each a listener with a small
//! pool of threads that accept and serve one connection at a time.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use capture_e2e::NetNs;

/// The echo server's port: every byte read is written back.
pub const ECHO_PORT: u16 = 8080;
/// The stream sink's port: reads until EOF, then writes the byte count (u64, little endian).
pub const SINK_PORT: u16 = 8081;

/// Enough threads for the 4 clients' connections at once, and a few to spare.
const ECHO_THREADS: usize = 6;
const SINK_THREADS: usize = 2;

/// Both listeners of one server namespace; stopped and joined on `Drop`.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Arc<TcpListener>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `ip:8080` and `ip:8081` in `ns`.
    pub fn start(ns: &NetNs, ip: std::net::IpAddr) -> io::Result<Server> {
        let mut server = Server {
            listeners: Vec::new(),
            threads: Vec::new(),
        };
        for (port, threads, serve) in [
            (ECHO_PORT, ECHO_THREADS, echo as fn(TcpStream) -> io::Result<()>),
            (SINK_PORT, SINK_THREADS, sink),
        ] {
            let addr = SocketAddr::new(ip, port);
            let listener = Arc::new(ns.run(|| TcpListener::bind(addr))?);
            for _ in 0..threads {
                let listener = Arc::clone(&listener);
                server.threads.push(thread::spawn(move || {
                    // accept fails (EINVAL) once Drop has shut the listener down.
                    while let Ok((stream, _)) = listener.accept() {
                        let _ = serve(stream);
                    }
                }));
            }
            server.listeners.push(listener);
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for listener in &self.listeners {
            // SAFETY: shutdown(2) on a listening socket we own; it wakes the threads blocked in
            // accept(2) with EINVAL.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// How long a served connection may stay silent: a client that died does not hold a thread
/// (and `Drop`) for longer.
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE))?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn sink(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_le_bytes())
}
