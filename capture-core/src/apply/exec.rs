//! Running the iptables programs: the flavors, the `Exec` seam tests replace, and the system
//! implementation that feeds each restore a sealed memory file.

use std::fs::File;
use std::io::{self, Seek as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::pristine::Pristine;
use crate::types::Family;

/// Which iptables implementation holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// x_tables, through `iptables-legacy-*`.
    Legacy,
    /// nf_tables, through `iptables-nft-*`.
    Nft,
}

impl Flavor {
    /// The other flavor: where a stale or split capture may also be.
    pub fn other(self) -> Self {
        match self {
            Self::Legacy => Self::Nft,
            Self::Nft => Self::Legacy,
        }
    }

    /// The flavor's name as `--force-iptables-version` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
        }
    }

    /// The restore program for a family.
    pub fn restore(self, family: Family) -> &'static str {
        self.programs(family)[0]
    }

    /// The save program for a family.
    pub fn save(self, family: Family) -> &'static str {
        self.programs(family)[1]
    }

    /// The restore and save programs for a family.
    fn programs(self, family: Family) -> [&'static str; 2] {
        match (self, family) {
            (Self::Legacy, Family::V4) => ["iptables-legacy-restore", "iptables-legacy-save"],
            (Self::Legacy, Family::V6) => ["ip6tables-legacy-restore", "ip6tables-legacy-save"],
            (Self::Nft, Family::V4) => ["iptables-nft-restore", "iptables-nft-save"],
            (Self::Nft, Family::V6) => ["ip6tables-nft-restore", "ip6tables-nft-save"],
        }
    }
}

/// What a program printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Whether it exited 0.
    pub success: bool,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs programs; the seam tests replace.
pub trait Exec {
    /// Runs `program` with `args`, feeding `stdin` if given.
    ///
    /// # Errors
    /// When the program cannot be started or its pipes fail.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output>;

    /// The private xtables lock file the programs use, if any: removing the capture removes it.
    fn lock_file(&self) -> Option<&Path> {
        None
    }

    /// Whether `flavor`'s save programs would list nothing for `families` in the calling
    /// thread's namespace but empty built-in chains (so there is nothing to compare), found
    /// without running a program; `None` when there is more, or it cannot tell: the caller then
    /// runs the save programs. Fakes say `None` unless they model it.
    fn pristine(&self, flavor: Flavor, families: &[Family]) -> Option<Pristine> {
        let _ = (flavor, families);
        None
    }

    /// Why `flavor`'s IPv4 save program would fail in the calling thread's namespace, when that
    /// is certain without running it; `None` when it may work. Fakes say `None` unless they
    /// model it.
    fn unusable(&self, flavor: Flavor) -> Option<String> {
        let _ = flavor;
        None
    }
}

/// Runs programs on this machine, in the calling thread's network namespace.
#[derive(Debug, Clone, Default)]
pub struct SystemExec {
    /// A private xtables lock file (`XTABLES_LOCKFILE`), so that capture in a pod's network
    /// namespace does not contend with the node's own iptables users for `/run/xtables.lock`.
    pub lock_file: Option<PathBuf>,
}

impl Exec for SystemExec {
    fn lock_file(&self) -> Option<&Path> {
        self.lock_file.as_deref()
    }

    fn pristine(&self, flavor: Flavor, families: &[Family]) -> Option<Pristine> {
        super::pristine::probe(flavor, families)
    }

    fn unusable(&self, flavor: Flavor) -> Option<String> {
        super::pristine::unusable(flavor)
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(match stdin {
            Some(text) => Stdio::from(sealed_input(text)?),
            None => Stdio::null(),
        });
        if let Some(lock) = &self.lock_file {
            cmd.env("XTABLES_LOCKFILE", lock);
        }
        let out = cmd.spawn()?.wait_with_output()?;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The whole of `text` in a sealed memory file, read from its start: a child reading it as
/// stdin always gets complete input, even if this process dies while the child runs (a pipe
/// being written would end early, and `iptables-restore` would commit the tables it got).
pub(super) fn sealed_input(text: &str) -> io::Result<OwnedFd> {
    let fd = memfd_create(
        c"capture-restore",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(text.as_bytes())?;
    let seals =
        SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
    file.rewind()?;
    Ok(file.into())
}
