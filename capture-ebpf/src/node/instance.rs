//! A pod's own `sk_lookup` instance, loaded without aya's loader.
//!
//! `sk_lookup` programs have no helper for the network namespace's cookie, so each pod gets an
//! instance of the program with its cookie in a global ([`NETNS_COOKIE_GLOBAL`]), attached to
//! its namespace. aya 0.14's `EbpfLoader::new` reads and parses the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`, 5 MiB) whatever it is asked to load, and its loader probes the
//! kernel's features and opens every map of the object: that was most of an enrollment's time
//! (≈90 ms of ≈100 ms in a debug build). The program needs none of it: it has no CO-RE
//! relocations, and its maps are the node's, pinned. So this parses the object with aya-obj,
//! points the program's map references at the pinned maps (and at fresh global-data maps, the
//! cookie patched in), links its subprograms, and loads it with one `BPF_PROG_LOAD`: the same
//! instructions aya would load.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::PathBuf;

use aya_obj::{EbpfSectionKind, Object};
use capture_ebpf_common::{MAP_NAMES, NETNS_COOKIE_GLOBAL, programs};

use crate::sys::{data_map_create, obj_get, prog_load_sk_lookup};
use crate::{Error, NetnsCookie, OBJECT};

/// Loads (verifies) the `sk_lookup` program for the pod `cookie`, its maps the pins `map_pin`
/// names. Returns the program's descriptor.
///
/// # Errors
/// [`Error::Instance`] naming the step that failed.
pub(super) fn load(cookie: NetnsCookie, map_pin: impl Fn(&str) -> PathBuf) -> Result<OwnedFd, Error> {
    let step = |step: &'static str| move |source: io::Error| Error::Instance { step, source };
    let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut obj = Object::parse(OBJECT).map_err(|e| step("parse the object")(invalid(&e)))?;
    let bytes = cookie.0.to_ne_bytes();
    obj.patch_map_data(HashMap::from([(NETNS_COOKIE_GLOBAL, (&bytes[..], true))]))
        .map_err(|e| step("set the pod's cookie")(invalid(&e)))?;
    let object_maps = std::mem::take(&mut obj.maps);
    let mut fds: Vec<(&str, OwnedFd)> = Vec::with_capacity(object_maps.len());
    for (name, map) in &object_maps {
        let fd = if MAP_NAMES.contains(&name.as_str()) {
            obj_get(&map_pin(name)).map_err(step("open a pinned map"))?
        } else {
            match map.section_kind() {
                EbpfSectionKind::Rodata | EbpfSectionKind::Data | EbpfSectionKind::Bss => {
                    data_map_create(name, map.data(), map.map_flags())
                        .map_err(step("create a global-data map"))?
                }
                _ => {
                    return Err(step("find a map")(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("map {name} is neither pinned by the node nor global data"),
                    )));
                }
            }
        };
        fds.push((name.as_str(), fd));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps = fds
        .iter()
        .map(|(name, fd)| (*name, fd.as_fd().as_raw_fd(), &object_maps[*name]));
    obj.relocate_maps(maps, &text_sections)
        .map_err(|e| step("relocate map references")(invalid(&e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| step("link subprograms")(invalid(&e)))?;
    let program = obj
        .programs
        .get(programs::SK_LOOKUP)
        .ok_or_else(|| step("find the program")(io::Error::from(io::ErrorKind::NotFound)))?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or_else(|| step("find the program's code")(io::Error::from(io::ErrorKind::NotFound)))?;
    // The map descriptors may close once the program holds its references.
    prog_load_sk_lookup(&function.instructions, &program.license, programs::SK_LOOKUP)
        .map_err(step("BPF_PROG_LOAD (verify)"))
}
