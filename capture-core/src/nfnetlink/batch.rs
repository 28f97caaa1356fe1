//! A transaction: any number of changes across tables and families, committed by the kernel
//! entirely or not at all.

use super::encode::{self, Encoded};
use super::object::{Chain, NfProto, Rule, Table};
use super::socket::NfSocket;
use super::list::Session;
use super::{Error, Listing};

/// One change in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `add table`: creates the table, or leaves an existing one as it is.
    AddTable(Table),
    /// `delete table`: deletes the table with everything in it; fails (and so fails the
    /// batch) when there is no such table, so put an [`Op::AddTable`] first, as Istio does,
    /// to delete a table that may be absent.
    DeleteTable {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        name: String,
    },
    /// `flush table`: deletes every rule of the table, keeping its chains.
    FlushTable {
        /// The table's family.
        family: NfProto,
        /// The table's name.
        name: String,
    },
    /// `add chain`: creates the chain, or leaves an existing one as it is.
    AddChain(Chain),
    /// `add rule` / `insert rule`, with the anonymous sets its lookups use.
    AddRule(Rule),
}

/// A transaction of nf_tables changes: `NFNL_MSG_BATCH_BEGIN`, one message per change (two
/// more for each anonymous set), `NFNL_MSG_BATCH_END`, sent in one `sendmsg`.
///
/// The kernel applies all of it or none of it: when it refuses one message, it undoes every
/// earlier one, so nothing in between is ever visible, to packets or to listings, and a
/// process killed at any point leaves either the old state or the new one.
///
/// # Examples
/// ```no_run
/// use capture_core::nfnetlink::{
///     Batch, BaseChain, Chain, ChainType, Expr, Hook, NfProto, Policy, Rule, Table, Verdict,
/// };
///
/// let table = Table::new(NfProto::Inet, "istio-proxy-nat");
/// let output = Chain {
///     family: NfProto::Inet,
///     table: table.name.clone(),
///     name: "output".into(),
///     base: Some(BaseChain {
///         kind: ChainType::Nat,
///         hook: Hook::Output,
///         priority: -100,
///         policy: Policy::Accept,
///     }),
/// };
/// let mut batch = Batch::new();
/// batch.add_table(table.clone()).flush_table(&table).add_chain(output.clone());
/// batch.add_rule(Rule::new(&output, vec![Expr::Counter, Expr::Verdict(Verdict::Return)]));
/// batch.commit()?;
/// # Ok::<(), capture_core::nfnetlink::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(super) ops: Vec<Op>,
    pub(super) generation: Option<u32>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Adds any change.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// `add table`.
    pub fn add_table(&mut self, table: Table) -> &mut Self {
        self.push(Op::AddTable(table))
    }

    /// `delete table` (see [`Op::DeleteTable`]).
    pub fn delete_table(&mut self, table: &Table) -> &mut Self {
        self.push(Op::DeleteTable {
            family: table.family,
            name: table.name.clone(),
        })
    }

    /// `flush table`.
    pub fn flush_table(&mut self, table: &Table) -> &mut Self {
        self.push(Op::FlushTable {
            family: table.family,
            name: table.name.clone(),
        })
    }

    /// `add chain`.
    pub fn add_chain(&mut self, chain: Chain) -> &mut Self {
        self.push(Op::AddChain(chain))
    }

    /// `add rule` (or `insert rule`, by the rule's position).
    pub fn add_rule(&mut self, rule: Rule) -> &mut Self {
        self.push(Op::AddRule(rule))
    }

    /// Makes the batch fail with [`Error::Changed`], changing nothing, unless the
    /// ruleset is still at `generation` (the [`Listing::generation`] it was planned from):
    /// nobody can slip a change in between reading the state and replacing it.
    pub fn expect_generation(&mut self, generation: u32) -> &mut Self {
        self.generation = Some(generation);
        self
    }

    /// The batch that recreates what `listing` holds: each table, its chains, its rules in
    /// order.
    pub fn recreate(listing: &Listing) -> Self {
        let mut batch = Self::new();
        for table in &listing.tables {
            batch.add_table(table.clone());
        }
        for chain in &listing.chains {
            batch.add_chain(chain.clone());
        }
        for rule in &listing.rules {
            batch.add_rule(rule.clone());
        }
        batch
    }

    /// The batch as the bytes [`Batch::commit`] sends, with sequence numbers from 1, for tests
    /// and debugging (compare with `nft --debug=mnl`).
    ///
    /// # Errors
    /// [`Error::Position`] when a rule's [`Position::Index`](super::Position::Index) has
    /// no rule there.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        Ok(encode::encode(self, 1)?.bytes)
    }

    /// Sends the batch to the kernel in the calling thread's network namespace and waits for
    /// its verdict on every message.
    ///
    /// An empty batch sends nothing.
    ///
    /// # Errors
    /// [`Error::Refused`] naming the first message the kernel refused (nothing changed
    /// then), [`Error::Changed`] when the generation moved on (see
    /// [`Batch::expect_generation`]), [`Error::Position`] before anything is sent, or a
    /// socket error.
    pub fn commit(&self) -> Result<(), Error> {
        if self.ops.is_empty() {
            return Ok(());
        }
        self.send(&mut NfSocket::open()?)
    }

    /// [`Batch::commit`] over `session`'s socket (the one the state was listed on).
    ///
    /// # Errors
    /// As [`Batch::commit`].
    pub fn commit_on(&self, session: &mut Session) -> Result<(), Error> {
        if self.ops.is_empty() {
            return Ok(());
        }
        self.send(&mut session.socket)
    }

    fn send(&self, socket: &mut NfSocket) -> Result<(), Error> {
        let encoded: Encoded = encode::encode(self, 1)?;
        socket.commit(&encoded, self.generation)
    }
}
