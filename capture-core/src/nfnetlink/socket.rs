//! The `NETLINK_NETFILTER` socket: a batch out and its acknowledgements in, listings, and the
//! ruleset generation.

use std::io;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};

use super::attr::{self, Attrs, Message, NLMSG_HDRLEN};
use super::encode::{self, Encoded, msg};
use super::object::NfProto;
use super::{Error, Malformed, Subject};

/// `NLMSG_ERROR` and `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_DUMP_INTR`: the listing saw a change while it ran.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_CAPPED` and `NLM_F_ACK_TLVS`, on acknowledgements.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG` and `NLMSGERR_ATTR_OFFS`: the extended acknowledgement's text and the
/// offset of the attribute it blames.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;
/// Room per acknowledgement in the receive buffer: the kernel charges a whole socket buffer
/// (well under 1 KiB for an acknowledgement) against it.
const ACK_ROOM: usize = 1024;

/// A message of a listing, copied out of its datagram.
#[derive(Debug, Clone)]
pub(super) struct Owned {
    /// The `nfgenmsg` family.
    pub(super) family: u8,
    /// The attributes.
    pub(super) attrs: Vec<u8>,
}

impl Owned {
    pub(super) fn attrs(&self) -> Attrs<'_> {
        Attrs(&self.attrs)
    }
}

/// Why a listing came back without its messages.
#[derive(Debug)]
pub(super) enum DumpError {
    /// A change happened while it ran: list again.
    Interrupted,
    /// Anything else.
    Failed(Error),
}

impl From<Error> for DumpError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// The receive buffer: no datagram the kernel sends is larger. A dump fills at most 32 KiB per
/// datagram, and no single nf_tables message is larger than 64 KiB (nft receives into as much).
const RECEIVE_BUFFER: usize = 65536 + 4096;

#[cfg(test)]
thread_local! {
    /// The sockets opened and the requests sent on this thread, for tests that count round
    /// trips.
    static COUNTED: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// The sockets opened and the requests sent on this thread so far.
#[cfg(test)]
pub(crate) fn counted() -> (u32, u32) {
    COUNTED.with(std::cell::Cell::get)
}

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
pub(super) struct NfSocket {
    socket: Socket,
    seq: u32,
    /// Where each datagram is received: one `recv` per datagram, without asking its size first.
    buffer: Vec<u8>,
}

impl NfSocket {
    pub(super) fn open() -> Result<Self, Error> {
        #[cfg(test)]
        COUNTED.with(|c| c.set((c.get().0 + 1, c.get().1)));
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::syscall("socket"))?;
        socket.bind_auto().map_err(Error::syscall("bind"))?;
        // Errors with the kernel's text and the blamed attribute's offset, without our whole
        // request echoed back. Kernels without them just say less.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self {
            socket,
            seq: 0,
            buffer: Vec::with_capacity(RECEIVE_BUFFER),
        })
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        #[cfg(test)]
        COUNTED.with(|c| c.set((c.get().0, c.get().1 + 1)));
        let kernel = SocketAddr::new(0, 0);
        self.socket
            .send_to(bytes, &kernel, 0)
            .map_err(Error::syscall("send"))?;
        Ok(())
    }

    /// Receives one datagram (`flags`: `MSG_DONTWAIT` or 0). One larger than the buffer, which
    /// the kernel does not send, would be cut short: that is an error, not a shorter answer.
    fn receive(&mut self, flags: libc::c_int) -> io::Result<&[u8]> {
        self.buffer.clear();
        let len = self.socket.recv(&mut self.buffer, flags | libc::MSG_TRUNC)?;
        if len > self.buffer.len() {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        Ok(&self.buffer)
    }

    /// Sends a batch and reads the kernel's verdict on each of its messages.
    pub(super) fn commit(&mut self, batch: &Encoded, generation: Option<u32>) -> Result<(), Error> {
        // The whole batch is one datagram, and every message is acknowledged: make room for
        // both (forcing past the system limits needs CAP_NET_ADMIN, which committing needs
        // anyway).
        let send_room = batch.bytes.len() + 4096;
        if setsockopt(&self.socket, sockopt::SndBufForce, &send_room).is_err() {
            setsockopt(&self.socket, sockopt::SndBuf, &send_room)
                .map_err(|e| Error::syscall("setsockopt(SO_SNDBUF)")(e.into()))?;
        }
        let receive_room = (batch.sent.len() + 2) * ACK_ROOM + 65536;
        if setsockopt(&self.socket, sockopt::RcvBufForce, &receive_room).is_err() {
            let _ = setsockopt(&self.socket, sockopt::RcvBuf, &receive_room);
        }
        self.send(&batch.bytes)?;
        // The kernel handles a batch inside `sendmsg`: by now every answer is queued.
        let mut datagrams = Vec::new();
        loop {
            match self.receive(libc::MSG_DONTWAIT) {
                Ok(datagram) => datagrams.push(datagram.to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(io) => return Err(Error::Syscall { call: "recv", io }),
            }
        }
        let mut messages = Vec::new();
        for datagram in &datagrams {
            messages.extend(Message::split(datagram).map_err(|source| Error::Malformed {
                subject: Box::new(Subject::Batch),
                source,
            })?);
        }
        blame(batch, &messages, generation)
    }

    /// Lists objects of one kind: `msg::GET*` with `NLM_F_DUMP`, filtered by `family` and
    /// the string attributes `filter`.
    pub(super) fn dump(
        &mut self,
        kind: u8,
        subject: &Subject,
        family: NfProto,
        filter: &[(u16, &str)],
    ) -> Result<Vec<Owned>, DumpError> {
        self.seq += 1;
        let seq = self.seq;
        self.send(&encode::request(kind, seq, family, filter))?;
        let malformed = |source| Error::Malformed {
            subject: Box::new(subject.clone()),
            source,
        };
        let mut found = Vec::new();
        let mut interrupted = false;
        self.answers(seq, subject, |message| {
            interrupted |= message.flags & NLM_F_DUMP_INTR != 0;
            match message.kind {
                NLMSG_DONE if interrupted => Err(DumpError::Interrupted),
                NLMSG_DONE => Ok(Some(std::mem::take(&mut found))),
                NLMSG_ERROR => match Answer::parse(message).map_err(malformed)?.errno_and_message() {
                    None => Ok(None),
                    // A table or set deleted between two requests of one listing.
                    Some((Errno::ENOENT, _)) => Err(DumpError::Interrupted),
                    Some((errno, kernel_message)) => Err(DumpError::Failed(Error::Refused {
                        subject: Box::new(subject.clone()),
                        errno,
                        kernel_message,
                    })),
                },
                _ => {
                    let (family, attrs) = message.nf_tables().map_err(malformed)?;
                    found.push(Owned {
                        family,
                        attrs: attrs.0.to_vec(),
                    });
                    Ok(None)
                }
            }
        })
    }

    /// The ruleset's generation: it changes with every committed batch.
    pub(super) fn generation(&mut self) -> Result<u32, Error> {
        let subject = Subject::List {
            what: "generation",
            family: NfProto::Unspec,
        };
        self.seq += 1;
        let seq = self.seq;
        self.send(&encode::request(msg::GETGEN, seq, NfProto::Unspec, &[]))?;
        let malformed = |source| Error::Malformed {
            subject: Box::new(subject.clone()),
            source,
        };
        self.answers(seq, &subject, |message| {
            if message.kind == NLMSG_ERROR {
                return match Answer::parse(message).map_err(malformed)?.errno_and_message() {
                    None => Ok(None),
                    Some((errno, kernel_message)) => Err(Error::Refused {
                        subject: Box::new(subject.clone()),
                        errno,
                        kernel_message,
                    }),
                };
            }
            if message.kind != encode::nft_type(msg::NEWGEN) {
                return Ok(None);
            }
            let (_, attrs) = message.nf_tables().map_err(malformed)?;
            let [_, id] = attrs.table::<2>().map_err(malformed)?;
            let id = attr::required("generation id", id).map_err(malformed)?;
            attr::be32("generation id", id).map(Some).map_err(malformed)
        })
    }

    /// Reads answers until `on` has what it waits for: `on` sees each message answering
    /// request `seq` (others are skipped) and returns `Some` when done.
    fn answers<T, E: From<Error>>(
        &mut self,
        seq: u32,
        subject: &Subject,
        mut on: impl FnMut(&Message<'_>) -> Result<Option<T>, E>,
    ) -> Result<T, E> {
        loop {
            let datagram = self
                .receive(0)
                .map_err(|io| Error::Syscall { call: "recv", io })?;
            let messages = Message::split(datagram).map_err(|source| Error::Malformed {
                subject: Box::new(subject.clone()),
                source,
            })?;
            for message in messages.iter().filter(|m| m.seq == seq) {
                if let Some(done) = on(message)? {
                    return Ok(done);
                }
            }
        }
    }
}

/// The outcome of a batch from the kernel's answers to it: the first refusal, named after its
/// message (and expression, when the kernel points at one), or success when the last message was
/// acknowledged.
pub(super) fn blame(batch: &Encoded, messages: &[Message<'_>], generation: Option<u32>) -> Result<(), Error> {
    let mut answers = Vec::new();
    for message in messages.iter().filter(|m| m.kind == NLMSG_ERROR) {
        answers.push(Answer::parse(message).map_err(|source| Error::Malformed {
            subject: Box::new(Subject::Batch),
            source,
        })?);
    }
    // The first refusal is the cause; later ones often only follow from it.
    if let Some(answer) = answers.iter().filter(|a| a.errno.is_some()).min_by_key(|a| a.seq) {
        let errno = answer.errno.expect("filtered on refusals");
        let kernel_message = answer.message.clone();
        let Some(sent) = batch.sent.iter().find(|s| s.seq == answer.seq) else {
            // The begin message: the batch as a whole.
            if let (Errno::ERESTART, Some(expected)) = (errno, generation) {
                return Err(Error::Changed { expected });
            }
            return Err(Error::Refused {
                subject: Box::new(Subject::Batch),
                errno,
                kernel_message,
            });
        };
        let mut subject = sent.subject.clone();
        if let (Subject::AddRule { expression, .. }, Some(offset)) = (&mut subject, answer.offset) {
            *expression = (1..)
                .zip(&sent.exprs)
                .find(|(_, (begin, end, _))| (*begin..*end).contains(&offset))
                .map(|(index, (_, _, name))| (index, name.clone()));
        }
        return Err(Error::Refused {
            subject: Box::new(subject),
            errno,
            kernel_message,
        });
    }
    // Only the last message asks for an acknowledgement: without it, the kernel's verdict was
    // lost (a receive buffer overrun), and the batch cannot be reported as committed.
    match batch.sent.last() {
        Some(last) if !answers.iter().any(|a| a.seq == last.seq) => Err(Error::Unanswered { seq: last.seq }),
        _ => Ok(()),
    }
}

/// An `NLMSG_ERROR` message: an acknowledgement (no errno) or a refusal.
#[derive(Debug)]
struct Answer {
    /// The sequence number of the message it answers.
    seq: u32,
    errno: Option<Errno>,
    /// The kernel's text.
    message: Option<String>,
    /// The offset of the blamed attribute from the start of the refused message.
    offset: Option<usize>,
}

impl Answer {
    /// The refusal's errno and the kernel's text; `None` for an acknowledgement.
    fn errno_and_message(self) -> Option<(Errno, Option<String>)> {
        self.errno.map(|errno| (errno, self.message))
    }

    fn parse(message: &Message<'_>) -> Result<Self, Malformed> {
        let payload = message.payload;
        if payload.len() < 4 + NLMSG_HDRLEN {
            return Err(Malformed::new("acknowledgement", "it is too short"));
        }
        let code = i32::from_ne_bytes(payload[0..4].try_into().expect("four bytes"));
        // The header of the answered message follows the code; its sequence number is ours.
        let seq = attr::u32_ne(&payload[4 + 8..4 + 12]);
        let mut answer = Self {
            seq,
            errno: (code != 0).then(|| Errno::from_raw(-code)),
            message: None,
            offset: None,
        };
        if message.flags & NLM_F_ACK_TLVS == 0 {
            return Ok(answer);
        }
        let echoed = if message.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            attr::u32_ne(&payload[4..8]) as usize
        };
        let Some(tlvs) = payload.get((4 + echoed).next_multiple_of(4)..) else {
            return Ok(answer);
        };
        for tlv in Attrs(tlvs).iter() {
            let (kind, value) = tlv?;
            match kind {
                NLMSGERR_ATTR_MSG => answer.message = Some(attr::string("kernel message", value)?),
                NLMSGERR_ATTR_OFFS if value.len() == 4 => answer.offset = Some(attr::u32_ne(value) as usize),
                _ => {}
            }
        }
        Ok(answer)
    }
}
