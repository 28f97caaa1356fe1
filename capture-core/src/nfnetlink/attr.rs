//! The netlink wire format nf_tables uses: message headers with the `nfgenmsg` family header,
//! and type-length-value attributes, nested or not.

use super::Malformed;

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub(super) const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END` (subsystem 0).
pub(super) const MSG_BATCH_BEGIN: u16 = 16;
pub(super) const MSG_BATCH_END: u16 = 17;
/// `NFNL_BATCH_GENID`: the generation a batch expects, in its begin message.
pub(super) const BATCH_GENID: u16 = 1;

/// `NLA_F_NESTED`, set on attributes holding attributes.
const NLA_F_NESTED: u16 = 0x8000;
/// The flag bits of an attribute's type field (`NLA_F_NESTED | NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `sizeof(struct nlmsghdr)` and `sizeof(struct nfgenmsg)`.
pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NFGEN_HDRLEN: usize = 4;

/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;

/// A growing buffer of netlink messages.
#[derive(Debug, Default)]
pub(super) struct Writer {
    buf: Vec<u8>,
    /// Where the last message written starts.
    last: usize,
}

impl Writer {
    /// The bytes written so far.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// How many bytes have been written.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Adds `flags` to the header of the last message written.
    pub(super) fn add_flags_to_last(&mut self, flags: u16) {
        let at = self.last + 6;
        let old = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]);
        self.buf[at..at + 2].copy_from_slice(&(old | flags).to_ne_bytes());
    }

    /// A message: `nlmsghdr` and `nfgenmsg`, then the attributes `fill` writes.
    pub(super) fn message(
        &mut self,
        kind: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
        fill: impl FnOnce(&mut Self),
    ) {
        let start = self.buf.len();
        self.last = start;
        // The length, filled in below.
        self.buf.extend_from_slice(&0_u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0_u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, NFNETLINK_V0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        fill(self);
        let len = u32::try_from(self.buf.len() - start).expect("a netlink message fits in 4 GiB");
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// An attribute holding `data`, padded to 4 bytes.
    pub(super) fn put(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("a netlink attribute fits in 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A 32-bit attribute in network order, as nf_tables wants every number.
    pub(super) fn put_u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A 64-bit attribute in network order.
    pub(super) fn put_u64(&mut self, kind: u16, value: u64) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A NUL-terminated string attribute.
    pub(super) fn put_str(&mut self, kind: u16, value: &str) {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.put(kind, &data);
    }

    /// A nested attribute whose contents `fill` writes.
    pub(super) fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        fill(self);
        let len = u16::try_from(self.buf.len() - start).expect("a netlink attribute fits in 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }
}

/// One netlink message of a datagram the kernel sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    /// Everything after `nlmsghdr`.
    pub(super) payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// Splits a datagram into its messages.
    pub(super) fn split(mut datagram: &'a [u8]) -> Result<Vec<Self>, Malformed> {
        let mut messages = Vec::new();
        while datagram.len() >= NLMSG_HDRLEN {
            let len = u32_ne(&datagram[0..4]) as usize;
            if len < NLMSG_HDRLEN || len > datagram.len() {
                return Err(Malformed::new("netlink message", "its length is out of bounds"));
            }
            messages.push(Self {
                kind: u16::from_ne_bytes([datagram[4], datagram[5]]),
                flags: u16::from_ne_bytes([datagram[6], datagram[7]]),
                seq: u32_ne(&datagram[8..12]),
                payload: &datagram[NLMSG_HDRLEN..len],
            });
            datagram = &datagram[len.next_multiple_of(4).min(datagram.len())..];
        }
        Ok(messages)
    }

    /// The `nfgenmsg` family and the attributes of an nf_tables message.
    pub(super) fn nf_tables(&self) -> Result<(u8, Attrs<'a>), Malformed> {
        if self.payload.len() < NFGEN_HDRLEN {
            return Err(Malformed::new(
                "nf_tables message",
                "it is shorter than its header",
            ));
        }
        Ok((self.payload[0], Attrs(&self.payload[NFGEN_HDRLEN..])))
    }
}

/// A run of attributes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attrs<'a>(pub(super) &'a [u8]);

impl<'a> Attrs<'a> {
    /// Every attribute with its type (flags masked off) and value.
    pub(super) fn iter(self) -> impl Iterator<Item = Result<(u16, &'a [u8]), Malformed>> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest.len() < 4 {
                return None;
            }
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > rest.len() {
                rest = &[];
                return Some(Err(Malformed::new("attribute", "its length is out of bounds")));
            }
            let value = &rest[4..len];
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            Some(Ok((kind, value)))
        })
    }

    /// The attributes indexed by type (the last one wins), for types up to `N - 1`.
    pub(super) fn table<const N: usize>(self) -> Result<[Option<&'a [u8]>; N], Malformed> {
        let mut found = [None; N];
        for attr in self.iter() {
            let (kind, value) = attr?;
            if let Some(slot) = found.get_mut(usize::from(kind)) {
                *slot = Some(value);
            }
        }
        Ok(found)
    }

    /// Whether every attribute's type is in `known`.
    pub(super) fn only(self, known: &[u16]) -> Result<bool, Malformed> {
        for attr in self.iter() {
            if !known.contains(&attr?.0) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

pub(super) fn u32_ne(bytes: &[u8]) -> u32 {
    u32::from_ne_bytes(bytes[..4].try_into().expect("four bytes"))
}

/// A 32-bit attribute value in network order.
pub(super) fn be32(what: &'static str, value: &[u8]) -> Result<u32, Malformed> {
    value
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| Malformed::new(what, "it is not 4 bytes long"))
}

/// A NUL-terminated string attribute value.
pub(super) fn string(what: &'static str, value: &[u8]) -> Result<String, Malformed> {
    let text = value.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8(text.to_vec()).map_err(|_| Malformed::new(what, "it is not UTF-8"))
}

/// A required attribute.
pub(super) fn required<'a>(what: &'static str, value: Option<&'a [u8]>) -> Result<&'a [u8], Malformed> {
    value.ok_or(Malformed::new(what, "it is missing"))
}
