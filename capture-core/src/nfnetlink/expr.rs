//! Kernel-level nf_tables expressions: the virtual machine instructions a rule is made of, as
//! `nft --debug=netlink` prints them (`[ meta load l4proto => reg 1 ]`, `[ cmp eq reg 1 0x06 ]`).
//!
//! Values are plain data in the byte order the kernel keeps them: network order for packet
//! fields (addresses, ports), host order for meta and conntrack values (marks, uids, zones). The
//! helpers at the end ([`ifname`], [`Expr::prefix`], [`Expr::ct_state`], …) spell values and
//! short sequences exactly as nft 1.0.x encodes them.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;

use super::object::NfProto;

/// Raw bytes of a value (a comparison operand, set element, immediate), shown in hex.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl<const N: usize> From<[u8; N]> for Bytes {
    fn from(bytes: [u8; N]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// A register of the nf_tables virtual machine (`NFT_REG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Register(pub u32);

impl Register {
    /// The verdict register (`NFT_REG_VERDICT`), where [`Expr::Verdict`] writes.
    pub const VERDICT: Self = Self(0);
    /// The first 16-byte data register (`NFT_REG_1`): nft 1.0.x puts every value of the
    /// Istio rule set here.
    pub const R1: Self = Self(1);
}

/// What a `meta` expression reads or writes (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetaKey {
    /// `meta mark`: the packet mark, 4 bytes, host order.
    Mark,
    /// `iifname`: the input interface name, [`ifname`]'s 16 bytes.
    Iifname,
    /// `oifname`: the output interface name, [`ifname`]'s 16 bytes.
    Oifname,
    /// `meta skuid`: the owning socket's uid, 4 bytes, host order.
    Skuid,
    /// `meta skgid`: the owning socket's gid, 4 bytes, host order.
    Skgid,
    /// `meta nfproto`: the packet's family (`NFPROTO_IPV4` 2, `NFPROTO_IPV6` 10), 1 byte.
    Nfproto,
    /// `meta l4proto`: the transport protocol (`IPPROTO_TCP` 6, `IPPROTO_UDP` 17), 1 byte.
    L4proto,
    /// Any other key, by number.
    Other(u32),
}

impl MetaKey {
    pub(super) fn number(self) -> u32 {
        match self {
            Self::Mark => 3,
            Self::Iifname => 6,
            Self::Oifname => 7,
            Self::Skuid => 10,
            Self::Skgid => 11,
            Self::Nfproto => 15,
            Self::L4proto => 16,
            Self::Other(n) => n,
        }
    }

    pub(super) fn from_number(n: u32) -> Self {
        match n {
            3 => Self::Mark,
            6 => Self::Iifname,
            7 => Self::Oifname,
            10 => Self::Skuid,
            11 => Self::Skgid,
            15 => Self::Nfproto,
            16 => Self::L4proto,
            n => Self::Other(n),
        }
    }
}

/// What a `ct` expression reads or writes (`enum nft_ct_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CtKey {
    /// `ct state`: a bit mask of [`CtState`], 4 bytes, host order.
    State,
    /// `ct mark`: the connection mark, 4 bytes, host order.
    Mark,
    /// `ct zone`: the conntrack zone, 2 bytes, host order.
    Zone,
    /// Any other key, by number.
    Other(u32),
}

impl CtKey {
    pub(super) fn number(self) -> u32 {
        match self {
            Self::State => 0,
            Self::Mark => 3,
            Self::Zone => 17,
            Self::Other(n) => n,
        }
    }

    pub(super) fn from_number(n: u32) -> Self {
        match n {
            0 => Self::State,
            3 => Self::Mark,
            17 => Self::Zone,
            n => Self::Other(n),
        }
    }
}

/// The `ct state` bits (`NF_CT_STATE_*_BIT`), for [`Expr::ct_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtState(pub u32);

impl CtState {
    /// `invalid`.
    pub const INVALID: Self = Self(1);
    /// `established`.
    pub const ESTABLISHED: Self = Self(2);
    /// `related`.
    pub const RELATED: Self = Self(4);
    /// `new`.
    pub const NEW: Self = Self(8);
    /// `untracked`.
    pub const UNTRACKED: Self = Self(64);
}

impl std::ops::BitOr for CtState {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Where a payload offset counts from (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PayloadBase {
    /// The link-layer header.
    Link,
    /// The network header (IPv4 or IPv6).
    Network,
    /// The transport header (TCP, UDP).
    Transport,
    /// Any other base, by number.
    Other(u32),
}

impl PayloadBase {
    pub(super) fn number(self) -> u32 {
        match self {
            Self::Link => 0,
            Self::Network => 1,
            Self::Transport => 2,
            Self::Other(n) => n,
        }
    }

    pub(super) fn from_number(n: u32) -> Self {
        match n {
            0 => Self::Link,
            1 => Self::Network,
            2 => Self::Transport,
            n => Self::Other(n),
        }
    }
}

/// A comparison (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CmpOp {
    /// `==`.
    Eq,
    /// `!=`.
    Neq,
    /// `<`.
    Lt,
    /// `<=`.
    Lte,
    /// `>`.
    Gt,
    /// `>=`.
    Gte,
}

impl CmpOp {
    pub(super) fn number(self) -> u32 {
        match self {
            Self::Eq => 0,
            Self::Neq => 1,
            Self::Lt => 2,
            Self::Lte => 3,
            Self::Gt => 4,
            Self::Gte => 5,
        }
    }

    pub(super) fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Eq,
            1 => Self::Neq,
            2 => Self::Lt,
            3 => Self::Lte,
            4 => Self::Gt,
            5 => Self::Gte,
            _ => return None,
        })
    }
}

/// A verdict: what happens to the packet next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// `accept` (`NF_ACCEPT`).
    Accept,
    /// `drop` (`NF_DROP`).
    Drop,
    /// `continue` (`NFT_CONTINUE`).
    Continue,
    /// `return` (`NFT_RETURN`).
    Return,
    /// `jump CHAIN` (`NFT_JUMP`).
    Jump(String),
    /// `goto CHAIN` (`NFT_GOTO`).
    Goto(String),
}

/// A set a rule looks values up in: nft's anonymous set (`{ 53, 15008 }`), created with the
/// rule in the same transaction and deleted with it.
///
/// Its kernel name (`__set0`, …) and transaction id are not part of the value: the kernel
/// picks the name, as it picks handles, so two rules with the same elements compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    /// nft's data type of the key (`13` inet_service, `7` ipv4_addr, `8` ipv6_addr, …).
    pub key_type: u32,
    /// The key's length in bytes.
    pub key_len: u32,
    /// `NFT_SET_*` flags: [`Set::ANONYMOUS`] `|` [`Set::CONSTANT`] for nft's `{ … }`.
    pub flags: u32,
    /// The keys, in network order for packet fields.
    pub elements: BTreeSet<Bytes>,
    /// nft's user data (key byte order and `typeof`), which nft uses to print the set.
    pub userdata: Option<Bytes>,
}

impl Set {
    /// `NFT_SET_ANONYMOUS`: bound to the rule that uses it.
    pub const ANONYMOUS: u32 = 0x1;
    /// `NFT_SET_CONSTANT`: its elements never change.
    pub const CONSTANT: u32 = 0x2;
    /// `NFT_SET_INTERVAL`: its elements are ranges.
    pub const INTERVAL: u32 = 0x4;

    /// nft's anonymous set of transport ports, as in `tcp dport != { 53, 15008 }`, with the
    /// user data nft 1.0.x writes for it (key big-endian, `typeof tcp dport`).
    ///
    /// # Examples
    /// ```
    /// use capture_core::nfnetlink::{L4Proto, PortField, Set};
    ///
    /// let set = Set::ports(L4Proto::Tcp, PortField::Destination, [53, 15008]);
    /// assert_eq!(set.elements.len(), 2);
    /// ```
    pub fn ports(proto: L4Proto, field: PortField, ports: impl IntoIterator<Item = u16>) -> Self {
        // nftnl's TLVs (type u8, length u8, value): KEYBYTEORDER = big endian, then
        // KEY_TYPEOF = { EXPR = payload, DATA = { PAYLOAD_DESC = proto, PAYLOAD_TYPE = field } }.
        let (desc, field) = (proto.nft_desc(), field.nft_field());
        let userdata = [
            &[0, 4, 2, 0, 0, 0][..],
            &[3, 20, 0, 4, 7, 0, 0, 0, 1, 12],
            &[0, 4, desc, 0, 0, 0, 1, 4, field, 0, 0, 0],
        ]
        .concat();
        Self {
            key_type: 13,
            key_len: 2,
            flags: Self::ANONYMOUS | Self::CONSTANT,
            elements: ports.into_iter().map(|p| Bytes::from(p.to_be_bytes())).collect(),
            userdata: Some(Bytes(userdata)),
        }
    }
}

/// A transport protocol, for matches and sets on its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Proto {
    /// TCP (`IPPROTO_TCP`, 6).
    Tcp,
    /// UDP (`IPPROTO_UDP`, 17).
    Udp,
}

impl L4Proto {
    /// The protocol number, the value of `meta l4proto`.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// nft's `enum proto_desc_id`.
    fn nft_desc(self) -> u8 {
        match self {
            Self::Tcp => 8,
            Self::Udp => 6,
        }
    }
}

/// A port field of the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortField {
    /// `sport`, at offset 0.
    Source,
    /// `dport`, at offset 2.
    Destination,
}

impl PortField {
    /// The field's offset in the TCP and UDP headers.
    pub fn offset(self) -> u32 {
        match self {
            Self::Source => 0,
            Self::Destination => 2,
        }
    }

    /// nft's header field number (`TCPHDR_SPORT`/`UDPHDR_SPORT` 1, `…_DPORT` 2).
    fn nft_field(self) -> u8 {
        match self {
            Self::Source => 1,
            Self::Destination => 2,
        }
    }
}

/// One instruction of a rule.
///
/// Each variant names the kernel expression it encodes (`nft_meta`, `nft_cmp`, …) and shows
/// how `nft --debug=netlink` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Expr {
    /// `nft_meta` load: `[ meta load KEY => reg DREG ]`.
    Meta {
        /// What to read.
        key: MetaKey,
        /// Where to put it.
        dreg: Register,
    },
    /// `nft_meta` store: `[ meta set KEY with reg SREG ]`.
    MetaSet {
        /// What to write.
        key: MetaKey,
        /// The register holding the value.
        sreg: Register,
    },
    /// `nft_payload` load: `[ payload load LENb @ BASE header + OFFSET => reg DREG ]`.
    Payload {
        /// Where to put the bytes.
        dreg: Register,
        /// The header the offset counts from.
        base: PayloadBase,
        /// The offset in bytes.
        offset: u32,
        /// How many bytes.
        len: u32,
    },
    /// `nft_cmp`: `[ cmp OP reg SREG DATA ]`; the rule stops here when false.
    Cmp {
        /// The register compared.
        sreg: Register,
        /// The comparison.
        op: CmpOp,
        /// What it is compared with; its length is the number of bytes compared.
        data: Bytes,
    },
    /// `nft_bitwise` (boolean): `[ bitwise reg DREG = ( reg SREG & MASK ) ^ XOR ]`.
    Bitwise {
        /// The input register.
        sreg: Register,
        /// The output register.
        dreg: Register,
        /// How many bytes.
        len: u32,
        /// ANDed in first.
        mask: Bytes,
        /// XORed in then.
        xor: Bytes,
    },
    /// `nft_lookup`: `[ lookup reg SREG set __set%d (0x1 when inverted) ]`.
    Lookup {
        /// The register holding the key.
        sreg: Register,
        /// The anonymous set.
        set: Set,
        /// `!=`: the rule goes on when the key is *not* in the set (`NFT_LOOKUP_F_INV`).
        invert: bool,
    },
    /// `nft_immediate` of data: `[ immediate reg DREG DATA ]`.
    Immediate {
        /// Where to put the value.
        dreg: Register,
        /// The value.
        data: Bytes,
    },
    /// `nft_immediate` into the verdict register: `[ immediate reg 0 accept ]`,
    /// `[ immediate reg 0 jump -> CHAIN ]`.
    Verdict(Verdict),
    /// `nft_counter`: `[ counter pkts 0 bytes 0 ]`. Its values are state, not configuration:
    /// a listing does not carry them and a batch starts them at zero.
    Counter,
    /// `nft_redir`: `[ redir proto_min reg MIN flags FLAGS ]` (`redirect to :PORT`).
    Redirect {
        /// The register holding the first port (2 bytes, network order).
        proto_min: Option<Register>,
        /// The register holding the last port; `None` means the same as `proto_min`.
        proto_max: Option<Register>,
        /// `NF_NAT_RANGE_*` flags: [`Expr::NAT_RANGE_PROTO_SPECIFIED`] with a port.
        flags: u32,
    },
    /// `nft_tproxy`: `[ tproxy ip port reg PORT ]` (`tproxy ip to :PORT`).
    Tproxy {
        /// [`NfProto::Ipv4`] or [`NfProto::Ipv6`] (`tproxy ip`, `tproxy ip6`);
        /// [`NfProto::Unspec`] in `inet` tables for both.
        family: NfProto,
        /// The register holding the address, if one is given.
        addr: Option<Register>,
        /// The register holding the port (2 bytes, network order), if one is given.
        port: Option<Register>,
    },
    /// `nft_ct` load: `[ ct load KEY => reg DREG ]`.
    Ct {
        /// What to read.
        key: CtKey,
        /// Where to put it.
        dreg: Register,
    },
    /// `nft_ct` store: `[ ct set KEY with reg SREG ]`.
    CtSet {
        /// What to write.
        key: CtKey,
        /// The register holding the value.
        sreg: Register,
    },
    /// An expression this module does not model (or a form of one it does not), kept as the
    /// kernel listed it so that a comparison sees it and a batch can write it back.
    Unknown {
        /// The expression's name (`"log"`, `"limit"`, …).
        name: String,
        /// Its attributes, as encoded.
        data: Bytes,
    },
}

impl Expr {
    /// `NF_NAT_RANGE_PROTO_SPECIFIED`: the redirect names a port.
    pub const NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

    /// `[ meta load KEY => reg 1 ]`.
    pub fn meta(key: MetaKey) -> Self {
        Self::Meta {
            key,
            dreg: Register::R1,
        }
    }

    /// `[ cmp OP reg 1 DATA ]`.
    pub fn cmp(op: CmpOp, data: impl Into<Bytes>) -> Self {
        Self::Cmp {
            sreg: Register::R1,
            op,
            data: data.into(),
        }
    }

    /// `[ payload load LENb @ BASE header + OFFSET => reg 1 ]`.
    pub fn payload(base: PayloadBase, offset: u32, len: u32) -> Self {
        Self::Payload {
            dreg: Register::R1,
            base,
            offset,
            len,
        }
    }

    /// `[ immediate reg 1 DATA ]`.
    pub fn immediate(data: impl Into<Bytes>) -> Self {
        Self::Immediate {
            dreg: Register::R1,
            data: data.into(),
        }
    }

    /// nft's match of an address prefix at `offset` of the network header
    /// (`ip daddr 10.16.0.0/12`): a prefix of whole bytes loads and compares just those
    /// bytes; any other (and `/0`) loads the whole address, masks it with `bitwise` and
    /// compares it with the host bits cleared.
    ///
    /// # Examples
    /// ```
    /// use capture_core::nfnetlink::{CmpOp, Expr, PayloadBase};
    ///
    /// // ip daddr 1.1.0.0/16: two bytes at offset 16, no mask.
    /// let exprs = Expr::prefix(16, &[1, 1, 0, 0], 16, CmpOp::Eq);
    /// assert_eq!(
    ///     exprs,
    ///     [Expr::payload(PayloadBase::Network, 16, 2), Expr::cmp(CmpOp::Eq, [1, 1])]
    /// );
    /// ```
    pub fn prefix(offset: u32, addr: &[u8], prefix_len: u8, op: CmpOp) -> Vec<Self> {
        let bits = usize::from(prefix_len).min(addr.len() * 8);
        let whole_bytes = bits % 8 == 0 && bits > 0;
        let len = if whole_bytes { bits / 8 } else { addr.len() };
        let mask: Vec<u8> = (0..len)
            .map(|i| {
                let covered = bits.saturating_sub(i * 8).min(8);
                // covered is 0..=8: the byte's top `covered` bits.
                (0xff_u16 << (8 - covered)) as u8
            })
            .collect();
        let value: Vec<u8> = addr[..len].iter().zip(&mask).map(|(a, m)| a & m).collect();
        let len32 = u32::try_from(len).expect("an address is at most 16 bytes");
        let mut exprs = vec![Self::payload(PayloadBase::Network, offset, len32)];
        if !whole_bytes {
            exprs.push(Self::Bitwise {
                sreg: Register::R1,
                dreg: Register::R1,
                len: len32,
                mask: Bytes(mask),
                xor: Bytes(vec![0; len]),
            });
        }
        exprs.push(Self::cmp(op, value));
        exprs
    }

    /// nft's `ct state S1,S2`: load, mask with the states, compare with zero (`!=`: one of
    /// them).
    pub fn ct_state(states: CtState) -> [Self; 3] {
        [
            Self::Ct {
                key: CtKey::State,
                dreg: Register::R1,
            },
            Self::Bitwise {
                sreg: Register::R1,
                dreg: Register::R1,
                len: 4,
                mask: Bytes(states.0.to_ne_bytes().to_vec()),
                xor: Bytes(vec![0; 4]),
            },
            Self::cmp(CmpOp::Neq, [0; 4]),
        ]
    }

    /// The expression's kernel name, as in `NFTA_EXPR_NAME`.
    pub fn name(&self) -> &str {
        match self {
            Self::Meta { .. } | Self::MetaSet { .. } => "meta",
            Self::Payload { .. } => "payload",
            Self::Cmp { .. } => "cmp",
            Self::Bitwise { .. } => "bitwise",
            Self::Lookup { .. } => "lookup",
            Self::Immediate { .. } | Self::Verdict(_) => "immediate",
            Self::Counter => "counter",
            Self::Redirect { .. } => "redir",
            Self::Tproxy { .. } => "tproxy",
            Self::Ct { .. } | Self::CtSet { .. } => "ct",
            Self::Unknown { name, .. } => name,
        }
    }
}

/// An interface name as nft compares it (`iifname lo`): NUL-padded to `IFNAMSIZ` (16 bytes).
///
/// Names of 16 bytes or more are cut to 15, as the kernel would never match them anyway.
pub fn ifname(name: &str) -> Bytes {
    let mut bytes = [0; 16];
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    Bytes::from(bytes)
}
