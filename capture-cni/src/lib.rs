//! `capture-cni`: a chained CNI plugin that applies a sidecar's traffic capture inside each
//! pod's network namespace, with the same rules and backend as `capture-init`.
//!
//! ```text
//! stdin conf + CNI_ARGS + pod annotations ─> PodCapture (IstioConfig) ─to_spec─> CaptureSpec
//!     ─> capture_core::install(Iptables) on a thread that has entered CNI_NETNS
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`version`] | the spec versions spoken (0.3.0 … 1.1.0) |
//! | [`env`](mod@env) | `CNI_COMMAND` and the variables each command needs; `CNI_ARGS` |
//! | [`conf`] | the stdin configuration and this plugin's fields, with Istio's defaults |
//! | [`pod`] | which pods are captured, and Istio's annotations over the defaults |
//! | [`plugin`] | the protocol: one invocation from environment and stdin to stdout and exit |
//! | [`netns`] | entering a pod's network namespace on a dedicated thread |
//! | [`capture`] | ADD/DEL/CHECK/STATUS/GC work against the iptables backend |
//! | [`install`] | the node installer: binary copy and conflist chaining |
//! | [`error`] | errors, their CNI codes and the error reply |

pub mod capture;
pub mod cli;
pub mod conf;
pub mod env;
pub mod error;
pub mod install;
pub mod netns;
pub mod plugin;
pub mod pod;
pub mod version;

pub use error::Error;
