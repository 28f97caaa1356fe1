//! Addresses as the programs handle them.

use core::ptr::{read_volatile, write_volatile};

use capture_ebpf_common::{AF_INET, AF_INET6, OrigDst};

/// The first 12 bytes of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// An IP address; IPv4 (also when it came IPv4-mapped) keeps its 4 bytes first.
#[derive(Clone, Copy)]
pub struct Ip {
    pub v4: bool,
    pub bytes: [u8; 16],
}

impl Ip {
    /// An IPv4 address from a context field (network byte order in a `u32`).
    #[inline(always)]
    pub fn from_ip4(raw: u32) -> Ip {
        let b = raw.to_ne_bytes();
        Ip {
            v4: true,
            bytes: [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// An IPv6 address from a context field; an IPv4-mapped one becomes IPv4.
    #[inline(always)]
    pub fn from_ip6(raw: [u32; 4]) -> Ip {
        let bytes = ip6_bytes(raw);
        if is_mapped(&bytes) {
            Ip::from_ip4(raw[3])
        } else {
            Ip { v4: false, bytes }
        }
    }

    /// The address as 16 bytes, IPv4 written IPv4-mapped: the form of [`PairKey`] addresses.
    ///
    /// [`PairKey`]: capture_ebpf_common::PairKey
    #[inline(always)]
    pub fn mapped(&self) -> [u8; 16] {
        if self.v4 {
            let b = &self.bytes;
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
        } else {
            self.bytes
        }
    }

    /// Whether this is the inbound passthrough source (`127.0.0.6`, `::6`) the proxy binds to
    /// reach its app.
    #[inline(always)]
    pub fn is_passthrough(&self) -> bool {
        if self.v4 {
            self.bytes[0] == PASSTHROUGH4[0]
                && self.bytes[1] == PASSTHROUGH4[1]
                && self.bytes[2] == PASSTHROUGH4[2]
                && self.bytes[3] == PASSTHROUGH4[3]
        } else {
            eq16(&self.bytes, &PASSTHROUGH6)
        }
    }

    /// The original destination record for this address and port.
    #[inline(always)]
    pub fn orig(&self, port: u16) -> OrigDst {
        OrigDst {
            addr: self.bytes,
            port,
            family: if self.v4 { AF_INET } else { AF_INET6 },
            _pad: 0,
        }
    }
}

/// Reads an IPv6 address field of a context or its socket (`user_ip6`, `src_ip6`, …) one
/// 4-byte word at a time, as the verifier allows context fields to be read.
///
/// # Safety
/// `field` points at such a field of the program's context, or of a non-null socket it hands
/// out.
#[inline(always)]
pub unsafe fn read_ip6(field: *const [u32; 4]) -> Ip {
    let w = field.cast::<u32>();
    // SAFETY: the caller's field is four readable words.
    Ip::from_ip6(unsafe {
        [
            read_volatile(w),
            read_volatile(w.add(1)),
            read_volatile(w.add(2)),
            read_volatile(w.add(3)),
        ]
    })
}

/// Writes `words` (network byte order) to an IPv6 address field of a context (`user_ip6`) one
/// 4-byte word at a time, as the verifier allows context fields to be written.
///
/// # Safety
/// `field` points at a writable such field of the program's context.
#[inline(always)]
pub unsafe fn write_ip6(field: *mut [u32; 4], words: [u32; 4]) {
    let w = field.cast::<u32>();
    // SAFETY: the caller's field is four writable words.
    unsafe {
        write_volatile(w, words[0]);
        write_volatile(w.add(1), words[1]);
        write_volatile(w.add(2), words[2]);
        write_volatile(w.add(3), words[3]);
    }
}

/// The 16 bytes of an IPv6 context field (four `u32`s, each in network byte order).
#[inline(always)]
pub fn ip6_bytes(raw: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        raw[0].to_ne_bytes(),
        raw[1].to_ne_bytes(),
        raw[2].to_ne_bytes(),
        raw[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

/// Four context-field words (network byte order) holding `bytes`.
#[inline(always)]
pub fn ip6_words(bytes: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}

/// Whether 16 bytes are an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn is_mapped(bytes: &[u8; 16]) -> bool {
    bytes[0] == V4_MAPPED[0]
        && bytes[1] == V4_MAPPED[1]
        && bytes[2] == V4_MAPPED[2]
        && bytes[3] == V4_MAPPED[3]
        && bytes[4] == V4_MAPPED[4]
        && bytes[5] == V4_MAPPED[5]
        && bytes[6] == V4_MAPPED[6]
        && bytes[7] == V4_MAPPED[7]
        && bytes[8] == V4_MAPPED[8]
        && bytes[9] == V4_MAPPED[9]
        && bytes[10] == V4_MAPPED[10]
        && bytes[11] == V4_MAPPED[11]
}

/// IPv4 `127.0.0.1` in the 16-byte form of [`Ip::bytes`].
pub const LOCALHOST4: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// IPv6 `::1`.
pub const LOCALHOST6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// `::ffff:127.0.0.1`: where a dual-stack socket's IPv4 connection is redirected.
pub const LOCALHOST4_MAPPED: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
/// The inbound passthrough source, `127.0.0.6`.
pub const PASSTHROUGH4: [u8; 4] = [127, 0, 0, 6];
/// The inbound passthrough source, `::6`.
pub const PASSTHROUGH6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6];

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u32 = 17;
/// `AF_INET` as context fields hold it.
pub const AF_INET_U32: u32 = 2;
/// `AF_INET6` as context fields hold it.
pub const AF_INET6_U32: u32 = 10;

/// Compares two 16-byte addresses without a call to `memcmp`.
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (ip6_words(a), ip6_words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}
