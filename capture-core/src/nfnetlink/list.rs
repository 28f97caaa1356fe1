//! Reading the ruleset back: tables, chains and rules (with their anonymous sets), as one
//! consistent snapshot.

use std::collections::HashMap;

use super::attr::string;
use super::decode::{self, ListedSet};
use super::encode::msg;
use super::expr::Set;
use super::object::{Chain, NfProto, Rule, Table};
use super::socket::{DumpError, NfSocket, Owned};
use super::{Error, Subject};

/// How often a listing that a concurrent change disturbed is started again.
const ATTEMPTS: u32 = 5;

/// What the kernel holds, as [`list`] read it: comparable with `==` to the objects a
/// [`Batch`](super::Batch) would write, and written back by
/// [`Batch::recreate`](super::Batch::recreate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The ruleset generation the listing saw, for
    /// [`Batch::expect_generation`](super::Batch::expect_generation).
    pub generation: u32,
    /// The tables, in the kernel's order (creation order within a family).
    pub tables: Vec<Table>,
    /// The chains of those tables, table by table, each table's in creation order.
    pub chains: Vec<Chain>,
    /// The rules of those chains, chain by chain, each chain's in order.
    pub rules: Vec<Rule>,
}

impl Listing {
    /// The chains of one table.
    pub fn chains_of<'a>(&'a self, table: &'a Table) -> impl Iterator<Item = &'a Chain> + 'a {
        self.chains
            .iter()
            .filter(move |c| c.family == table.family && c.table == table.name)
    }

    /// The rules of one chain, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a Chain) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.family == chain.family && r.table == chain.table && r.chain == chain.name)
    }
}

/// Lists the tables of `family` ([`NfProto::Unspec`]: of every family), or only the one named
/// `table`, with their chains and rules, in the calling thread's network namespace.
///
/// The listing is one snapshot: it is read again when the ruleset's generation moved on
/// while it was read. An absent table gives an empty listing.
///
/// # Errors
/// When the socket fails, the kernel refuses a listing (`EPERM` without `CAP_NET_ADMIN`),
/// an answer cannot be decoded (a chain bound to devices, a family nf_tables does not have), or
/// the ruleset keeps changing.
///
/// # Examples
/// ```no_run
/// use capture_core::nfnetlink::{NfProto, list};
///
/// let listing = list(NfProto::Inet, Some("istio-proxy-nat"))?;
/// for chain in &listing.chains {
///     println!("{chain}: {} rules", listing.rules_of(chain).count());
/// }
/// # Ok::<(), capture_core::nfnetlink::Error>(())
/// ```
pub fn list(family: NfProto, table: Option<&str>) -> Result<Listing, Error> {
    let only = table.map(|t| [t]);
    consistent(&mut NfSocket::open()?, family, only.as_ref().map(|t| &t[..]))
}

/// One [`snapshot`] that no commit interrupted: listed again while the ruleset generation moves
/// during the listing, at most [`ATTEMPTS`] times.
fn consistent(socket: &mut NfSocket, family: NfProto, only: Option<&[&str]>) -> Result<Listing, Error> {
    for _ in 0..ATTEMPTS {
        let before = socket.generation()?;
        let listing = match snapshot(socket, family, only) {
            Ok(listing) => listing,
            Err(DumpError::Interrupted) => continue,
            Err(DumpError::Failed(e)) => return Err(e),
        };
        if socket.generation()? == before {
            return Ok(Listing {
                generation: before,
                ..listing
            });
        }
    }
    Err(Error::Interrupted { attempts: ATTEMPTS })
}

/// What [`outline`] read: the tables and chains of some families, and how many rules those
/// chains hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// The tables, in the kernel's order.
    pub tables: Vec<Table>,
    /// Their chains.
    pub chains: Vec<Chain>,
    /// How many rules the chains hold (the rules themselves are not decoded).
    pub rules: usize,
}

/// The tables and chains of `families`, and how many rules they hold, in the calling thread's
/// network namespace: what telling "is anything there" needs, without the sets and rules a
/// [`list`] decodes. One socket and one snapshot for all the families: every family's objects
/// are dumped at once (`NFPROTO_UNSPEC`) and those of other families skipped undecoded (a
/// `netdev` chain's devices, say). Without a table of those families the table dump is the
/// whole answer: chains and rules are not asked for.
///
/// # Errors
/// As [`list`].
pub fn outline(families: &[NfProto]) -> Result<Outline, Error> {
    let mut socket = NfSocket::open()?;
    for _ in 0..ATTEMPTS {
        let before = socket.generation()?;
        let outline = match outline_snapshot(&mut socket, families) {
            Ok(outline) => outline,
            Err(DumpError::Interrupted) => continue,
            Err(DumpError::Failed(e)) => return Err(e),
        };
        // One dump is a snapshot by itself (a commit while it runs marks it interrupted).
        if outline.tables.is_empty() || socket.generation()? == before {
            return Ok(outline);
        }
    }
    Err(Error::Interrupted { attempts: ATTEMPTS })
}

fn outline_snapshot(socket: &mut NfSocket, families: &[NfProto]) -> Result<Outline, DumpError> {
    let wanted = |message: &Owned| families.iter().any(|f| f.number() == message.family);
    let decoding = |what| {
        move |source| {
            DumpError::Failed(Error::Malformed {
                subject: Box::new(Subject::List {
                    what,
                    family: NfProto::Unspec,
                }),
                source,
            })
        }
    };
    let dump = |socket: &mut NfSocket, kind, what| {
        let subject = Subject::List {
            what,
            family: NfProto::Unspec,
        };
        socket.dump(kind, &subject, NfProto::Unspec, &[])
    };
    let mut outline = Outline::default();
    for message in dump(socket, msg::GETTABLE, "tables")?.iter().filter(|m| wanted(m)) {
        outline.tables.push(decode::table(message).map_err(decoding("tables"))?);
    }
    if outline.tables.is_empty() {
        return Ok(outline);
    }
    for message in dump(socket, msg::GETCHAIN, "chains")?.iter().filter(|m| wanted(m)) {
        outline.chains.push(decode::chain(message).map_err(decoding("chains"))?);
    }
    outline.rules = dump(socket, msg::GETRULE, "rules")?.iter().filter(|m| wanted(m)).count();
    Ok(outline)
}

/// [`list`] of each table named in `tables` (absent ones list as nothing), read over one
/// socket as one snapshot: all at the same ruleset generation.
///
/// # Errors
/// As [`list`].
pub fn list_tables(family: NfProto, tables: &[&str]) -> Result<Vec<Listing>, Error> {
    Session::open()?.list_tables(family, tables)
}

/// One `NETLINK_NETFILTER` socket in the calling thread's network namespace for a listing and
/// the batch planned from it ([`Batch::commit_on`](super::Batch::commit_on)): a read-then-write
/// costs one socket, not two.
pub struct Session {
    pub(super) socket: NfSocket,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// A socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn open() -> Result<Self, Error> {
        NfSocket::open().map(|socket| Self { socket })
    }

    /// [`list_tables`] over this session's socket.
    ///
    /// # Errors
    /// As [`list`].
    pub fn list_tables(&mut self, family: NfProto, tables: &[&str]) -> Result<Vec<Listing>, Error> {
        let listing = consistent(&mut self.socket, family, Some(tables))?;
        Ok(tables
            .iter()
            .map(|name| Listing {
                generation: listing.generation,
                tables: listing
                    .tables
                    .iter()
                    .filter(|t| t.name == *name)
                    .cloned()
                    .collect(),
                chains: listing
                    .chains
                    .iter()
                    .filter(|c| c.table == *name)
                    .cloned()
                    .collect(),
                rules: listing
                    .rules
                    .iter()
                    .filter(|r| r.table == *name)
                    .cloned()
                    .collect(),
            })
            .collect())
    }
}

fn snapshot(socket: &mut NfSocket, family: NfProto, only: Option<&[&str]>) -> Result<Listing, DumpError> {
    let subject = |what| Subject::List { what, family };
    let decoding = |what| {
        move |source| {
            DumpError::Failed(Error::Malformed {
                subject: Box::new(subject(what)),
                source,
            })
        }
    };
    // The table of a listed object, to skip other tables' objects before decoding them;
    // objects of families this module does not know are skipped too.
    let table_of = |message: &Owned, attr: usize| -> Option<String> {
        NfProto::from_number(message.family)?;
        let found = message.attrs().table::<3>().ok()?[attr]?;
        string("table name", found)
            .ok()
            .filter(|t| only.is_none_or(|only| only.contains(&t.as_str())))
    };

    let mut tables = Vec::new();
    for message in socket.dump(msg::GETTABLE, &subject("tables"), family, &[])? {
        // NFTA_TABLE_NAME
        if table_of(&message, 1).is_some() {
            tables.push(decode::table(&message).map_err(decoding("tables"))?);
        }
    }
    // A filtered dump of a table that does not exist is refused with ENOENT, which would read
    // as a table deleted mid-listing: a missing table simply lists as nothing.
    if only.is_some() && tables.is_empty() {
        return Ok(Listing {
            generation: 0,
            tables,
            chains: Vec::new(),
            rules: Vec::new(),
        });
    }
    // Sets and rules are dumped per table asked for (every kernel understands the table filter
    // of those listings), or all at once.
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let filters: Vec<Vec<(u16, &str)>> = match only {
        Some(_) => names.iter().map(|n| vec![(1, n.as_str())]).collect(),
        None => vec![Vec::new()],
    };
    let mut chains = Vec::new();
    for message in socket.dump(msg::GETCHAIN, &subject("chains"), family, &[])? {
        // NFTA_CHAIN_TABLE
        if table_of(&message, 1).is_some() {
            chains.push(decode::chain(&message).map_err(decoding("chains"))?);
        }
    }

    let mut sets: HashMap<(NfProto, String, String), Set> = HashMap::new();
    for filter in &filters {
        for message in socket.dump(msg::GETSET, &subject("sets"), family, filter)? {
            if table_of(&message, 1).is_none() {
                continue;
            }
            let ListedSet {
                family,
                table,
                name,
                set,
            } = decode::set(&message).map_err(decoding("sets"))?;
            let Some(mut set) = set else {
                continue;
            };
            let elements_filter = [(1, table.as_str()), (2, name.as_str())];
            let mut complete = true;
            for message in socket.dump(
                msg::GETSETELEM,
                &subject("set elements"),
                family,
                &elements_filter,
            )? {
                match decode::elements(&message).map_err(decoding("set elements"))? {
                    Some(keys) => set.elements.extend(keys),
                    None => complete = false,
                }
            }
            if complete {
                sets.insert((family, table, name), set);
            }
        }
    }

    let mut rules = Vec::new();
    for filter in &filters {
        for message in socket.dump(msg::GETRULE, &subject("rules"), family, filter)? {
            // NFTA_RULE_TABLE
            let Some(table) = table_of(&message, 1) else {
                continue;
            };
            let rule_family = NfProto::from_number(message.family).expect("checked by table_of");
            let set = |name: &str| sets.get(&(rule_family, table.clone(), name.to_owned()));
            rules.push(decode::rule(&message, set).map_err(decoding("rules"))?);
        }
    }
    Ok(Listing {
        generation: 0,
        tables,
        chains,
        rules,
    })
}
