//! Finding a proxy that was already listening on the inbound port when its pod was enrolled.
//!
//! The sockops program records the proxy's inbound listener when the proxy calls `listen()`
//! in an enrolled pod. A proxy that listened earlier (the pod enrolled again after the node's
//! programs were reloaded, say) is found here instead:
//!
//! ```text
//! /proc/thread-self/net/tcp{,6} in the pod's netns ─> inodes listening on the port (not loopback)
//!   ─> /proc/<pid>/fd/* → "socket:[inode]" ─> pidfd_open + pidfd_getfd ─> our copy of the socket
//! ```
//!
//! Only processes visible in our `/proc` can be found (a node agent sees all of them); taking a
//! descriptor from another process needs `CAP_SYS_PTRACE` over it (root has it).

use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::Error;
use crate::netns::in_netns;

/// A listening socket taken from the process that owns it.
#[derive(Debug)]
pub(crate) struct Adopted {
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Our duplicate of the socket.
    pub socket: OwnedFd,
}

/// The sockets listening on `port` in the network namespace `netns`, other than those bound to
/// a loopback address, at most one per family (one member of a `SO_REUSEPORT` group stands for
/// the group), each duplicated from a process that holds it.
///
/// # Errors
/// [`Error::Syscall`] when the namespace cannot be entered; [`Error::Io`] when its socket
/// tables cannot be read. Processes that vanish or cannot be inspected are skipped.
pub(crate) fn listeners(netns: BorrowedFd<'_>, port: u16) -> Result<Vec<Adopted>, Error> {
    let inodes = in_netns(netns, || {
        let mut inodes = Vec::new();
        // Reading the tables walks the node's whole TCP hash whatever the namespace holds; the
        // namespace's own counters tell first whether it has a TCP socket at all (a pod that
        // just started has none).
        if !has_tcp_sockets() {
            return Ok(inodes);
        }
        for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
            let path = Path::new("/proc/thread-self/net").join(file);
            let table = match fs::read_to_string(&path) {
                Ok(table) => table,
                // No IPv6 in this kernel.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        op: "read",
                        path,
                        source,
                    });
                }
            };
            inodes.extend(listening_inodes(&table, port).into_iter().map(|i| (family, i)));
        }
        Ok(inodes)
    })?;
    let mut adopted: Vec<Adopted> = Vec::new();
    if inodes.is_empty() {
        return Ok(adopted);
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return Ok(adopted);
    };
    for proc in procs.flatten() {
        let Some(pid) = proc.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = socket_inode(&target.to_string_lossy()) else {
                continue;
            };
            let Some(&(family, _)) = inodes.iter().find(|(_, i)| *i == inode) else {
                continue;
            };
            if adopted.iter().any(|a| a.family == family) {
                continue;
            }
            let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(socket) = take_fd(pid, number) {
                adopted.push(Adopted { family, socket });
            }
        }
        if adopted.len() == 2 {
            break;
        }
    }
    Ok(adopted)
}

/// Whether the calling thread's network namespace may have a TCP socket: the `inuse` counts of
/// `/proc/thread-self/net/sockstat` (`TCP:`) and `sockstat6` (`TCP6:`), which count listening
/// sockets too. True when they cannot be read.
fn has_tcp_sockets() -> bool {
    [("sockstat", "TCP:"), ("sockstat6", "TCP6:")]
        .iter()
        .any(|(file, label)| {
            match fs::read_to_string(Path::new("/proc/thread-self/net").join(file)) {
                Ok(text) => tcp_in_use(&text, label) != Some(0),
                // No IPv6 in this kernel: no IPv6 sockets either.
                Err(e) if e.kind() == io::ErrorKind::NotFound && *file == "sockstat6" => false,
                Err(_) => true,
            }
        })
}

/// The `inuse` count on the `label` line of a sockstat file (`TCP: inuse 3 orphan 0 …`).
fn tcp_in_use(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    let mut words = line.split_whitespace().skip(1);
    while let Some(word) = words.next() {
        if word == "inuse" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// `AF_INET` as [`Adopted::family`] holds it.
const AF_INET: u16 = capture_ebpf_common::AF_INET;
/// `AF_INET6` as [`Adopted::family`] holds it.
const AF_INET6: u16 = capture_ebpf_common::AF_INET6;

/// The inodes of the sockets in a `/proc/net/tcp` or `tcp6` table that listen on `port` and are
/// not bound to a loopback address.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            // 0A is TCP_LISTEN.
            if *state != "0A" {
                return None;
            }
            let (addr, local_port) = local.split_once(':')?;
            if u16::from_str_radix(local_port, 16).ok()? != port || is_loopback_hex(addr)? {
                return None;
            }
            inode.parse().ok()
        })
        .collect()
}

/// Whether an address as `/proc/net/tcp{,6}` prints it (each 32-bit word of the
/// network-order address printed as a native-endian hex number) is loopback: `127.0.0.0/8`,
/// `::1`, or `::ffff:127.0.0.0/104`. `None` when it does not parse.
fn is_loopback_hex(addr: &str) -> Option<bool> {
    let words = addr
        .as_bytes()
        .chunks(8)
        .map(|w| u32::from_str_radix(std::str::from_utf8(w).ok()?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(bytes[0] == 127),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            Some(v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
        _ => None,
    }
}

/// The inode of a `/proc/<pid>/fd/<n>` link target `socket:[<inode>]`.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Duplicates descriptor `fd` of process `pid` into this process (`pidfd_getfd(2)`, 5.6).
fn take_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).expect("a descriptor fits an i32")) };
    // SAFETY: pidfd_getfd takes descriptors and flags by value and returns a new descriptor or -1.
    let dup = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        )
    };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(dup).expect("a descriptor fits an i32")) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tells_how_many_tcp_sockets_the_namespace_has() {
        let sockstat = "sockets: used 180\nTCP: inuse 2 orphan 0 tw 0 alloc 3 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(tcp_in_use(sockstat, "TCP:"), Some(2));
        let sockstat6 = "TCP6: inuse 0\nUDP6: inuse 0\n";
        assert_eq!(tcp_in_use(sockstat6, "TCP6:"), Some(0));
        assert_eq!(tcp_in_use(sockstat6, "TCP:"), None);
    }

    #[test]
    fn listeners_are_read_from_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 111 1 0 100 0 0 10 0\n\
             1: 0100007F:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 222 1 0 100 0 0 10 0\n\
             2: 0100010A:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 333 1 0 100 0 0 10 0\n\
             3: 0100010A:3A9E 0200010A:9C40 01 00000000:00000000 00:00000000 00000000  1337        0 444 1 0 100 0 0 10 0\n\
             4: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 15006), [111, 333]);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 00000000000000000000000000000000:3A9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 666 1 0 100 0 0 10 0\n\
             1: 00000000000000000000000001000000:3A9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 777 1 0 100 0 0 10 0\n\
             2: 0000000000000000FFFF00000100007F:3A9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 888 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp6, 15006), [666]);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
