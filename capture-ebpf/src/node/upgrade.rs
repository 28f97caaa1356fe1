//! Replacing the node's programs under running pods: [`Node::upgrade`].
//!
//! ```text
//! node lock ─> pins of this layout, or of one it upgrades from (UPGRADES_FROM), acting on the cgroup
//!   ─> each map: pinned and of the same shape: reused | same entries, other capacity: migrated
//!      | POD_STATS of narrower values (layout v2): migrated, each value into the first slots | not pinned: created
//!   ─> the object loaded and verified (new and migrated maps pinned in <pin_dir>/upgrade/), entries copied
//!   ─> same programs, same maps: nothing to do
//!   ─> the new sk_msg program attached to SPLICE (replacing the old one: sockets spliced from then on run it)
//!   ─> BPF_LINK_UPDATE of each cgroup link
//!   ─> the new sk_lookup program into SK_LOOKUP_PROGS: one map update for every pod
//!      | SK_LOOKUP_PROGS and LOOKUP_NETNS new (layout v3: a whole program per pod): the program
//!        into the new array, then BPF_LINK_UPDATE of each pod's sk_lookup link to its new stub
//!   ─> new maps renamed into maps/, the layout version last; entries written meanwhile copied again
//! any failure ─> every link back on its old program, the old pins back: the node as it was
//! ```
//!
//! The links are never detached: `BPF_LINK_UPDATE` swaps the program of an attachment in one
//! step, so every connection meets either the old program or the new one, never none. Between
//! two hooks' updates old and new programs run side by side on the same maps, which is why a
//! map that changes meaning needs a new layout version with a hand-written migration, and
//! only layouts listed in [`UPGRADES_FROM`] (maps added, capacities changed) are upgraded.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use capture_ebpf_common::{
    INBOUND_LISTENERS, LAYOUT, LAYOUT_VERSION, LOOKUP_NETNS, MAP_NAMES, SK_LOOKUP_PROGS, SPLICE,
    UPGRADES_FROM, programs,
};

use super::{
    PROGRAMS, check_acts_on, layout_of, load_cgroup_programs, load_sk_lookup, load_sk_msg, pinned_link_info,
};
use crate::pin_dir::{NodeLock, PinDir, clear_staging, create_dir, detach_pinned, remove_pin};
use crate::sys::{
    MapShape, link_create, link_info, link_update, map_copy, map_shape, obj_get, obj_pin, prog_array_get,
    prog_array_set, prog_by_id, prog_tag, sk_msg_attach, sk_msg_attached, sk_msg_detach, version_map_create,
};
use crate::{AttachedCgroup, Error, NetnsCookie, Node, OBJECT, probe};

/// What [`Node::upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The layout version the pins had.
    pub from_layout: u32,
    /// Cgroup hooks whose program was replaced.
    pub hooks: usize,
    /// Hooks this capture has and the pins had not, attached now.
    pub added_hooks: Vec<&'static str>,
    /// Pods whose `sk_lookup` program was replaced (through `SK_LOOKUP_PROGS`, or their link
    /// switched to a new stub).
    pub pods: usize,
    /// Maps this layout has and the pins had not, created empty.
    pub created: Vec<&'static str>,
    /// Maps whose capacity changed, with how many entries were carried over.
    pub migrated: Vec<(&'static str, usize)>,
}

impl Upgrade {
    /// Whether nothing was changed: the same programs were attached to the same maps.
    #[must_use]
    pub fn is_nothing(&self) -> bool {
        self.hooks == 0
            && self.added_hooks.is_empty()
            && self.pods == 0
            && self.created.is_empty()
            && self.migrated.is_empty()
    }
}

impl std::fmt::Display for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_nothing() {
            return write!(f, "the programs in place are this capture's; nothing changed");
        }
        write!(
            f,
            "programs replaced on {} and for {}, every pod captured throughout",
            capture_core::count(self.hooks, "cgroup hook", "cgroup hooks"),
            capture_core::count(self.pods, "pod", "pods")
        )?;
        if !self.added_hooks.is_empty() {
            write!(
                f,
                "; programs attached to new hooks: {}",
                self.added_hooks.join(", ")
            )?;
        }
        if !self.created.is_empty() {
            write!(f, "; maps created: {}", self.created.join(", "))?;
        }
        for (map, entries) in &self.migrated {
            write!(
                f,
                "; map {map} resized, {} carried over",
                capture_core::count(*entries, "entry", "entries")
            )?;
        }
        if self.from_layout != LAYOUT_VERSION {
            write!(f, "; map layout v{} -> v{LAYOUT_VERSION}", self.from_layout)?;
        }
        Ok(())
    }
}

/// What happens to one map.
enum Step {
    /// The pinned map is used as it is.
    Reuse,
    /// A new map, filled from the pinned one (`old`, of shape `shape`), whose values are
    /// `value_size` bytes (more than `shape`'s only for a widened `POD_STATS`).
    Migrate {
        old: OwnedFd,
        shape: MapShape,
        value_size: u32,
    },
    /// A new, empty map.
    Create,
    /// A new, empty map in place of the pinned one (`old`), whose entries are not carried over:
    /// `SK_LOOKUP_PROGS` (filled by the upgrade) and `LOOKUP_NETNS` (scratch), made anew as a
    /// pair when either is missing or of another shape.
    Fresh { old: OwnedFd },
}

/// The maps each pod's stub refers to: both reused, or both made anew (then every pod gets a
/// new stub).
const STUB_MAPS: [&str; 2] = [SK_LOOKUP_PROGS, LOOKUP_NETNS];

/// Whether either map the stubs refer to is not reused (so both are made anew, and every pod
/// gets a new stub).
fn stub_maps_renewed(steps: &[(&'static str, Step)]) -> bool {
    steps
        .iter()
        .any(|(name, step)| STUB_MAPS.contains(name) && !matches!(step, Step::Reuse))
}

/// Links switched so far, each with its previous program, put back on failure; and the pins
/// of links created, detached and removed on failure.
#[derive(Default)]
struct Switched {
    links: Vec<(OwnedFd, OwnedFd, OwnedFd)>,
    created: Vec<PathBuf>,
    /// The pinned `SK_LOOKUP_PROGS` whose slot was replaced, with the program it held.
    slot: Option<(OwnedFd, Option<OwnedFd>)>,
    /// `SPLICE`, the `sk_msg` program attached to it now and the one it had.
    sk_msg: Option<(OwnedFd, OwnedFd, Option<OwnedFd>)>,
}

impl Switched {
    fn switch(&mut self, link: OwnedFd, new: OwnedFd, old: OwnedFd) -> std::io::Result<()> {
        link_update(link.as_fd(), new.as_fd(), old.as_fd())?;
        self.links.push((link, new, old));
        Ok(())
    }

    /// Puts every link back on its old program, last switched first.
    fn undo(self) {
        if let Some((map, new, old)) = &self.sk_msg {
            let _ = match old {
                Some(old) => sk_msg_attach(old.as_fd(), map.as_fd()),
                None => sk_msg_detach(new.as_fd(), map.as_fd()),
            };
        }
        if let Some((map, old)) = &self.slot {
            let _ = prog_array_set(map.as_fd(), old.as_ref().map(AsFd::as_fd));
        }
        for pin in self.created.iter().rev() {
            let _ = detach_pinned(pin);
        }
        for (link, new, old) in self.links.into_iter().rev() {
            let _ = link_update(link.as_fd(), old.as_fd(), new.as_fd());
        }
    }
}

impl Node {
    /// Replaces the programs loaded under `pins` with this capture's, on their existing links,
    /// keeping every pod captured (see the module's documentation). Takes the node lock.
    /// Returns what changed; running it again changes nothing, unless `always` replaces
    /// programs that are the same as this capture's too (to rehearse an upgrade).
    ///
    /// # Errors
    /// [`Error::NotLoaded`], [`Error::Layout`] for pins of a layout this capture does not
    /// upgrade from, [`Error::Migration`] for a map whose entries cannot be carried over, the
    /// errors of [`Node::open_for`]'s check, and those of loading and switching. On any error
    /// the node is as it was.
    pub fn upgrade(cgroup: &Path, pins: &PinDir, always: bool) -> Result<Upgrade, Error> {
        if OBJECT.is_empty() {
            return Err(Error::ObjectMissing);
        }
        probe()?;
        let lock = pins.lock()?;
        if !pins.is_loaded() {
            return Err(Error::NotLoaded {
                path: pins.path().to_owned(),
            });
        }
        let found = layout_of(pins)?;
        let from_layout = match found {
            Some(v) if v == LAYOUT_VERSION || UPGRADES_FROM.contains(&v) => v,
            _ => {
                return Err(Error::Layout {
                    pin_dir: pins.path().to_owned(),
                    found,
                    expected: LAYOUT_VERSION,
                });
            }
        };
        check_acts_on(cgroup, pins, true)?;
        let staging = pins.staging();
        clear_staging(&staging)?;
        let result = Upgrader {
            pins,
            cgroup,
            staging: &staging,
            from_layout,
            always,
            _lock: lock,
        }
        .run();
        let _ = clear_staging(&staging);
        result
    }
}

struct Upgrader<'a> {
    pins: &'a PinDir,
    /// Where hooks the pins have no link for yet are attached, unless the others are elsewhere.
    cgroup: &'a Path,
    staging: &'a Path,
    from_layout: u32,
    always: bool,
    _lock: NodeLock,
}

impl Upgrader<'_> {
    fn run(self) -> Result<Upgrade, Error> {
        let steps = self.plan()?;
        let map_pin = |name: &str| -> PathBuf {
            match steps.iter().find(|(n, _)| *n == name) {
                Some((_, Step::Reuse)) | None => self.pins.map(name),
                // Create, Migrate, Fresh: the new map, made by the loader below.
                Some(_) => self.staging.join(name),
            }
        };
        create_dir(self.staging)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<_> = MAP_NAMES.iter().map(|name| (*name, map_pin(name))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
        load_cgroup_programs(&mut ebpf)?;
        let sk_lookup = program_fd(load_sk_lookup(&mut ebpf)?.fd(), programs::SK_LOOKUP)?;
        let sk_msg = program_fd(load_sk_msg(&mut ebpf)?.fd(), programs::SK_MSG)?;
        let splice = open_pin(&map_pin(SPLICE), "open pinned map")?;
        // Err: the kernel cannot say (before 5.19); the program is then taken to be the same.
        let sk_msg_before = sk_msg_attached(splice.as_fd()).map(|id| id.and_then(|id| prog_by_id(id).ok()));
        // With both maps reused, the pods' stubs stay and the program is swapped in the array.
        let new_stubs = stub_maps_renewed(&steps);
        let progs = open_pin(&map_pin(SK_LOOKUP_PROGS), "open pinned map")?;
        let in_slot = if new_stubs {
            None
        } else {
            prog_array_get(progs.as_fd())
                .map_err(syscall("bpf(BPF_MAP_LOOKUP_ELEM)"))?
                .map(|id| prog_by_id(id).map_err(syscall("bpf(BPF_PROG_GET_FD_BY_ID)")))
                .transpose()?
        };

        let mut migrated = Vec::new();
        for (name, step) in &steps {
            if let Step::Migrate {
                old,
                shape,
                value_size,
            } = step
            {
                let new = open_pin(&self.staging.join(name), "open pinned map")?;
                let copied =
                    map_copy(old.as_fd(), new.as_fd(), *shape, *value_size, false).map_err(|source| {
                        Error::Migration {
                            pin_dir: self.pins.path().to_owned(),
                            map: name,
                            reason: format!("could not be copied: {source}"),
                        }
                    })?;
                migrated.push((*name, copied));
            }
        }

        // The cgroup links and what each would switch to.
        let mut hooks = Vec::new();
        let mut added = Vec::new();
        let mut attached_to = None;
        for (name, hook) in PROGRAMS {
            let program = ebpf.program(name).expect("loaded above");
            let new = program_fd(program.fd(), name)?;
            let link = match obj_get(&self.pins.link(name)) {
                Ok(link) => link,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    added.push((name, hook, new));
                    continue;
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "open pinned link",
                        path: self.pins.link(name),
                        source,
                    });
                }
            };
            let info = pinned_link_info(self.pins, name)?;
            attached_to = attached_to.or(info.cgroup());
            let old = prog_by_id(info.prog_id).map_err(syscall("bpf(BPF_PROG_GET_FD_BY_ID)"))?;
            hooks.push((link, new, old));
        }
        let pods = self.pods()?;
        let same_programs = hooks.iter().all(|(_, new, old)| same_tag(new, old))
            && in_slot.as_ref().is_some_and(|old| same_tag(&sk_lookup, old))
            && sk_msg_before
                .as_ref()
                .map_or(true, |old| old.as_ref().is_some_and(|old| same_tag(&sk_msg, old)));
        let same_maps = steps.iter().all(|(_, step)| matches!(step, Step::Reuse));
        if same_programs
            && added.is_empty()
            && same_maps
            && self.from_layout == LAYOUT_VERSION
            && !self.always
        {
            return Ok(Upgrade {
                from_layout: self.from_layout,
                hooks: 0,
                added_hooks: Vec::new(),
                pods: 0,
                created: Vec::new(),
                migrated: Vec::new(),
            });
        }

        let mut switched = Switched::default();
        let outcome = (|| {
            // Attached before the new sockops can put a socket into a new SPLICE.
            sk_msg_attach(sk_msg.as_fd(), splice.as_fd()).map_err(|source| Error::Io {
                op: "attach the sk_msg program to",
                path: map_pin(SPLICE),
                source,
            })?;
            switched.sk_msg = Some((
                splice.try_clone().map_err(syscall("dup"))?,
                sk_msg.try_clone().map_err(syscall("dup"))?,
                sk_msg_before.ok().flatten(),
            ));
            let hook_count = hooks.len();
            for (link, new, old) in hooks {
                switched
                    .switch(link, new, old)
                    .map_err(syscall("bpf(BPF_LINK_UPDATE)"))?;
            }
            // Hooks added since: attached where the other programs are.
            let cgroup = attached_to
                .and_then(|id| AttachedCgroup::find(id).path)
                .unwrap_or_else(|| self.cgroup.to_owned());
            let dir = fs::File::open(&cgroup).map_err(|source| Error::Io {
                op: "open cgroup",
                path: cgroup.clone(),
                source,
            })?;
            for (name, hook, new) in &added {
                let link = link_create(new.as_fd(), dir.as_fd(), hook.attach_type())
                    .map_err(syscall("bpf(BPF_LINK_CREATE)"))?;
                let pin = self.pins.link(name);
                obj_pin(link.as_fd(), &pin).map_err(|source| Error::Io {
                    op: "pin link",
                    path: pin.clone(),
                    source,
                })?;
                switched.created.push(pin);
            }
            let pod_count = pods.len();
            let put = |what| {
                prog_array_set(progs.as_fd(), Some(sk_lookup.as_fd())).map_err(|source| Error::Io {
                    op: what,
                    path: map_pin(SK_LOOKUP_PROGS),
                    source,
                })
            };
            if new_stubs {
                // The new array is filled before any stub that tail calls into it runs.
                put("put the sk_lookup program into")?;
                let netns = open_pin(&map_pin(LOOKUP_NETNS), "open pinned map")?;
                for (cookie, link, old) in pods {
                    let new = super::stub::load(cookie, netns.as_fd(), progs.as_fd())?;
                    switched
                        .switch(link, new, old)
                        .map_err(syscall("bpf(BPF_LINK_UPDATE)"))?;
                }
            } else {
                // One update: every pod's stub tail calls into the new program from here on.
                let map = progs.try_clone().map_err(syscall("dup"))?;
                put("replace the sk_lookup program in")?;
                switched.slot = Some((map, in_slot));
            }
            Ok::<_, Error>((hook_count, pod_count))
        })();
        let (hooks, pods) = match outcome {
            Ok(counts) => counts,
            Err(e) => {
                switched.undo();
                return Err(e);
            }
        };
        if let Err(e) = self.move_pins_into_place(&steps) {
            switched.undo();
            return Err(e);
        }
        // Pods enrolled before their per-pod counters existed get theirs now.
        if steps
            .iter()
            .any(|(name, step)| *name == capture_ebpf_common::POD_STATS && matches!(step, Step::Create))
        {
            let mut node = Node::open(self.pins)?;
            for (cookie, _) in node.pods()? {
                node.create_pod_stats(cookie.0)?;
            }
        }
        // Entries the old programs wrote into a migrated map after the first copy.
        for (name, step) in &steps {
            if let Step::Migrate {
                old,
                shape,
                value_size,
            } = step
                && let Ok(new) = obj_get(&self.pins.map(name))
            {
                let _ = map_copy(old.as_fd(), new.as_fd(), *shape, *value_size, true);
            }
        }
        Ok(Upgrade {
            from_layout: self.from_layout,
            hooks,
            added_hooks: added.iter().map(|(name, _, _)| *name).collect(),
            pods,
            created: steps
                .iter()
                .filter(|(_, s)| matches!(s, Step::Create | Step::Fresh { .. }))
                .map(|(n, _)| *n)
                .collect(),
            migrated,
        })
    }

    /// What happens to each map of this capture's object.
    fn plan(&self) -> Result<Vec<(&'static str, Step)>, Error> {
        let object = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Load(Box::new(e.into())))?;
        let mut steps = Vec::new();
        for name in MAP_NAMES {
            let def = object.maps.get(name).ok_or_else(|| Error::Migration {
                pin_dir: self.pins.path().to_owned(),
                map: name,
                reason: "is missing from this capture's programs".to_owned(),
            })?;
            let want = MapShape {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
                map_flags: def.map_flags(),
            };
            let old = match obj_get(&self.pins.map(name)) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    steps.push((name, Step::Create));
                    continue;
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "open pinned map",
                        path: self.pins.map(name),
                        source,
                    });
                }
            };
            let shape = map_shape(old.as_fd()).map_err(syscall("bpf(BPF_OBJ_GET_INFO_BY_FD)"))?;
            let step = if shape == want {
                Step::Reuse
            } else if STUB_MAPS.contains(&name) {
                // Nothing in them to carry over.
                Step::Fresh { old }
            } else if name == capture_ebpf_common::POD_STATS
                && (shape.map_type, shape.key_size, shape.map_flags)
                    == (want.map_type, want.key_size, want.map_flags)
                && shape.value_size < want.value_size
                && shape.value_size % 8 == 0
            {
                // Layout v2's counters (fewer `STAT_*` slots): each pod's are copied into the
                // first slots of the wider value, the new slots zero.
                Step::Migrate {
                    old,
                    shape,
                    value_size: want.value_size,
                }
            } else if (shape.map_type, shape.key_size, shape.value_size, shape.map_flags)
                != (want.map_type, want.key_size, want.value_size, want.map_flags)
            {
                return Err(Error::Migration {
                    pin_dir: self.pins.path().to_owned(),
                    map: name,
                    reason: format!(
                        "has another type, key or value size (type {}, key {} B, value {} B, flags {:#x}; this capture's: type {}, key {} B, value {} B, flags {:#x})",
                        shape.map_type,
                        shape.key_size,
                        shape.value_size,
                        shape.map_flags,
                        want.map_type,
                        want.key_size,
                        want.value_size,
                        want.map_flags
                    ),
                });
            } else if name == INBOUND_LISTENERS || name == SPLICE {
                return Err(Error::Migration {
                    pin_dir: self.pins.path().to_owned(),
                    map: name,
                    reason: format!(
                        "changes capacity ({} -> {}) and holds sockets, which cannot be copied",
                        shape.max_entries, want.max_entries
                    ),
                });
            } else {
                Step::Migrate {
                    old,
                    shape,
                    value_size: want.value_size,
                }
            };
            steps.push((name, step));
        }
        // The stubs refer to both maps: either both stay, or both are made anew.
        if stub_maps_renewed(&steps) {
            for (name, step) in &mut steps {
                if STUB_MAPS.contains(name) {
                    *step = match std::mem::replace(step, Step::Create) {
                        Step::Reuse => Step::Fresh {
                            old: open_pin(&self.pins.map(name), "open pinned map")?,
                        },
                        other => other,
                    };
                }
            }
        }
        Ok(steps)
    }

    /// Every enrolled pod whose namespace still exists: its cookie, its `sk_lookup` link and
    /// the program on it. Links of namespaces that are gone are left to [`Node::gc`].
    fn pods(&self) -> Result<Vec<(NetnsCookie, OwnedFd, OwnedFd)>, Error> {
        let inbound = self.pins.inbound();
        let entries = match fs::read_dir(&inbound) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "read directory",
                    path: inbound,
                    source,
                });
            }
        };
        let mut pods = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                op: "read directory",
                path: inbound.clone(),
                source,
            })?;
            let Some(cookie) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let link = open_pin(&entry.path(), "open pinned link")?;
            let info = link_info(link.as_fd()).map_err(syscall("bpf(BPF_OBJ_GET_INFO_BY_FD)"))?;
            if info.netns().is_none() {
                continue;
            }
            let old = prog_by_id(info.prog_id).map_err(syscall("bpf(BPF_PROG_GET_FD_BY_ID)"))?;
            pods.push((NetnsCookie(cookie), link, old));
        }
        Ok(pods)
    }

    /// Renames the new maps' pins over the old ones, then pins this layout's version; on a
    /// failure puts back what it had moved.
    fn move_pins_into_place(&self, steps: &[(&'static str, Step)]) -> Result<(), Error> {
        let mut moved: Vec<(&'static str, Option<&OwnedFd>)> = Vec::new();
        let mut result = Ok(());
        for (name, step) in steps {
            let old = match step {
                Step::Reuse => continue,
                Step::Migrate { old, .. } | Step::Fresh { old } => Some(old),
                Step::Create => None,
            };
            let (from, to) = (self.staging.join(name), self.pins.map(name));
            if let Err(source) = fs::rename(&from, &to) {
                result = Err(Error::Io {
                    op: "rename pin",
                    path: from,
                    source,
                });
                break;
            }
            moved.push((name, old));
        }
        if result.is_ok() && self.from_layout != LAYOUT_VERSION {
            result = self.pin_layout();
        }
        if result.is_err() {
            for (name, old) in moved.into_iter().rev() {
                let path = self.pins.map(name);
                let _ = remove_pin(&path);
                if let Some(old) = old {
                    let _ = obj_pin(old.as_fd(), &path);
                }
            }
        }
        result
    }

    /// Replaces the pinned layout version with this capture's.
    fn pin_layout(&self) -> Result<(), Error> {
        let version = version_map_create(LAYOUT_VERSION).map_err(syscall("bpf(BPF_MAP_CREATE)"))?;
        let staged = self.staging.join(LAYOUT);
        obj_pin(version.as_fd(), &staged).map_err(|source| Error::Io {
            op: "pin map",
            path: staged.clone(),
            source,
        })?;
        fs::rename(&staged, self.pins.map(LAYOUT)).map_err(|source| Error::Io {
            op: "rename pin",
            path: staged,
            source,
        })
    }
}

fn open_pin(path: &Path, op: &'static str) -> Result<OwnedFd, Error> {
    obj_get(path).map_err(|source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    })
}

/// An owned copy of a loaded program's descriptor.
fn program_fd(
    fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    program: &'static str,
) -> Result<OwnedFd, Error> {
    let err = |source| Error::Program {
        program,
        op: "get fd",
        source,
    };
    let fd = fd.map_err(err)?;
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| err(aya::programs::ProgramError::IOError(e)))
}

fn same_tag(a: &OwnedFd, b: &OwnedFd) -> bool {
    matches!((prog_tag(a.as_fd()), prog_tag(b.as_fd())), (Ok(x), Ok(y)) if x == y)
}

fn syscall(call: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Syscall { call, source }
}
