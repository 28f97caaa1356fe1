//! The native nftables backend's rules: Istio's `--native-nftables` rule set, typed.
//!
//! [`plan`] derives a [`Ruleset`] from the same [`CaptureSpec`](crate::CaptureSpec) the
//! iptables backend plans from: three `inet` tables (`istio-proxy-nat`, `istio-proxy-mangle`,
//! `istio-proxy-raw`), each holding both families, with their chains and rule operations in
//! Istio's order. [`Transaction`] renders it as the `nft -f` transaction Istio writes, byte for
//! byte; [`Cleanup`] is the transaction that removes the tables.
//!
//! ```text
//! CaptureSpec ─nft::plan─> nft::Ruleset ─Transaction─> nft -f text
//!                               └──────────────────────> (netlink expressions)
//! ```
//!
//! # Examples
//! ```
//! use capture_core::CaptureSpec;
//! use capture_core::nft::{Transaction, plan};
//! let text = Transaction(&plan(&CaptureSpec::sidecar())).to_string();
//! assert!(text.contains(
//!     "add chain inet istio-proxy-nat prerouting { type nat hook prerouting priority -100 ; }\n"
//! ));
//! ```

mod backend;
mod compile;
pub mod model;
mod plan;
mod text;

pub use backend::{NftError, Nftables, current, replacement};
pub use compile::{CompileError, Compiled, compile};
pub use model::{
    BaseChain, Chain, ChainType, Cmp, Dir, Keyword, Match, Net, Operation, Ports, Position, Rule, Ruleset,
    Statement, TABLES, Table, TableFamily, Verdict, chain_name, table_name,
};
pub use plan::plan;
pub use text::{Cleanup, Transaction};
