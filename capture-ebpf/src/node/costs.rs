//! What the node's programs cost: the kernel's run counts and run times of each, read through
//! the pinned links (the cgroup programs), the `SPLICE` map (the `sk_msg` program attached to
//! it) and the pods' `sk_lookup` links (the stubs, whose runs include the shared program they
//! tail-call).

use std::fs;
use std::io;
use std::os::fd::AsFd;

use capture_ebpf_common::programs;

use super::{Node, PROGRAMS, pinned_link_info};
use crate::Error;
use crate::sys::{link_info, obj_get, prog_by_id, prog_runs, sk_msg_attached};

/// The kernel's account of one of the node's programs ([`Node::program_costs`]). The kernel
/// counts only while `kernel.bpf_stats_enabled` is 1: with it off (the default, as counting
/// costs two clock reads a run) both figures stay where they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramCost {
    /// The program's name (`capture_ebpf_common::programs`).
    pub program: &'static str,
    /// The loaded programs summed here: 1, or for the `sk_lookup` stubs one per enrolled pod.
    pub instances: usize,
    /// Runs counted.
    pub runs: u64,
    /// Time spent in those runs, in nanoseconds.
    pub run_time_ns: u64,
}

impl ProgramCost {
    /// The mean time of a run, in nanoseconds (0 before any).
    #[must_use]
    pub fn mean_ns(&self) -> u64 {
        self.run_time_ns.checked_div(self.runs).unwrap_or(0)
    }
}

impl Node {
    /// Every program's runs and run time, the cgroup programs in hook order, the `sk_msg`
    /// program (when attached), then the pods' `sk_lookup` stubs together. A pod unenrolled
    /// while this reads is skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when a link pin cannot be opened or the pods' links cannot be listed,
    /// [`Error::Syscall`] when a link's or program's info cannot be read.
    pub fn program_costs(&self) -> Result<Vec<ProgramCost>, Error> {
        let syscall = |call| move |source| Error::Syscall { call, source };
        let runs_of = |prog_id| -> Result<(u64, u64), Error> {
            let prog = prog_by_id(prog_id).map_err(syscall("bpf(BPF_PROG_GET_FD_BY_ID)"))?;
            prog_runs(prog.as_fd()).map_err(syscall("bpf(BPF_OBJ_GET_INFO_BY_FD)"))
        };
        let mut costs = Vec::with_capacity(PROGRAMS.len() + 2);
        for (program, _) in PROGRAMS {
            let (runs, run_time_ns) = runs_of(pinned_link_info(&self.pins, program)?.prog_id)?;
            costs.push(ProgramCost {
                program,
                instances: 1,
                runs,
                run_time_ns,
            });
        }
        if let Some(id) = sk_msg_attached(self.splice.fd().as_fd()).map_err(syscall("bpf(BPF_PROG_QUERY)"))? {
            let (runs, run_time_ns) = runs_of(id)?;
            costs.push(ProgramCost {
                program: programs::SK_MSG,
                instances: 1,
                runs,
                run_time_ns,
            });
        }
        let mut stubs = ProgramCost {
            program: programs::SK_LOOKUP,
            instances: 0,
            runs: 0,
            run_time_ns: 0,
        };
        let inbound = self.pins.inbound();
        let io = |op, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let entries = match fs::read_dir(&inbound) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                costs.push(stubs);
                return Ok(costs);
            }
            Err(e) => return Err(io("list pinned sk_lookup links", &inbound)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io("list pinned sk_lookup links", &inbound))?.path();
            let link = match obj_get(&path) {
                Ok(link) => link,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("open pinned link", &path)(e)),
            };
            let info = link_info(link.as_fd()).map_err(syscall("bpf(BPF_OBJ_GET_INFO_BY_FD)"))?;
            let (runs, run_time_ns) = runs_of(info.prog_id)?;
            stubs.instances += 1;
            stubs.runs += runs;
            stubs.run_time_ns += run_time_ns;
        }
        costs.push(stubs);
        Ok(costs)
    }
}
