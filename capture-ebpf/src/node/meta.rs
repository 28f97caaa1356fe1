//! Who enrolled a pod ([`PodMetadata`] in `POD_META`), CNI GC by attachment, and how many
//! entries each map holds.

use std::collections::BTreeSet;

use aya::maps::MapError;
use capture_ebpf_common::{
    CIDRS, INBOUND_LISTENERS, ORIG_BY_COOKIE, ORIG_BY_PAIR, OWNERS, POD_CONFIG, POD_META, PORTS, STAT_SLOTS,
    STATS,
};

use super::{Node, ignore_missing, keys_of, map_error};
use crate::{Error, NetnsCookie, PodMetadata};

/// Where a pod's `sk_lookup` link says its network namespace is ([`Node::netns_link`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsLink {
    /// The link is attached to the namespace with this inode number.
    Attached {
        /// The namespace's inode (as `/proc/<pid>/ns/net` shows it).
        inode: u32,
    },
    /// The link is attached to no namespace: the namespace is gone ([`Node::gc`] reclaims the pod).
    Gone,
    /// No link is pinned for the pod, so its namespace cannot be told.
    NotPinned,
}

impl Node {
    /// Records who enrolled the pod `cookie` and as what, replacing what was recorded. The
    /// programs never read it; [`Node::unenroll`] and [`Node::gc`] remove it with the pod's
    /// other entries, and [`Node::unenroll_unless`] (CNI GC) finds pods by it.
    ///
    /// # Errors
    /// [`Error::MetadataTooLong`] naming the text that does not fit (nothing written);
    /// [`Error::MapFull`] or [`Error::Map`] when the map cannot be written.
    pub fn set_metadata(&mut self, cookie: NetnsCookie, meta: &PodMetadata) -> Result<(), Error> {
        let value = meta.to_value()?;
        self.pod_meta
            .insert(cookie.0, value, 0)
            .map_err(map_error(POD_META, "insert"))
    }

    /// What was recorded for the pod `cookie` by [`Node::set_metadata`], if anything.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn metadata(&self, cookie: NetnsCookie) -> Result<Option<PodMetadata>, Error> {
        match self.pod_meta.get(&cookie.0, 0) {
            Ok(value) => Ok(Some(PodMetadata::from_value(&value))),
            Err(e) if super::is_missing(&e) => Ok(None),
            Err(source) => Err(Error::Map {
                map: POD_META,
                op: "get",
                source,
            }),
        }
    }

    /// Every recorded [`PodMetadata`], by cookie.
    ///
    /// # Errors
    /// [`Error::Map`] when the map cannot be read.
    pub fn all_metadata(&self) -> Result<Vec<(NetnsCookie, PodMetadata)>, Error> {
        let mut all = self
            .pod_meta
            .iter()
            .map(|item| item.map(|(k, v)| (NetnsCookie(k), PodMetadata::from_value(&v))))
            .collect::<Result<Vec<_>, MapError>>()
            .map_err(map_error(POD_META, "iterate"))?;
        all.sort_unstable_by_key(|(cookie, _)| *cookie);
        Ok(all)
    }

    /// CNI GC: unenrolls every pod with recorded metadata that `keep` does not keep (the
    /// runtime's valid attachments name its container id and interface), and drops metadata
    /// left without an enrolled pod. Pods enrolled without metadata (by capture-init) are left
    /// alone. Returns the pods unenrolled, with what was recorded for them.
    ///
    /// # Errors
    /// When a map cannot be read or an entry or link removed.
    pub fn unenroll_unless(
        &mut self,
        keep: impl Fn(&PodMetadata) -> bool,
    ) -> Result<Vec<(NetnsCookie, PodMetadata)>, Error> {
        let doomed: Vec<(NetnsCookie, PodMetadata)> = self
            .all_metadata()?
            .into_iter()
            .filter(|(_, meta)| !keep(meta))
            .collect();
        let cookies: Vec<NetnsCookie> = doomed.iter().map(|(c, _)| *c).collect();
        let enrolled = if cookies.is_empty() {
            Vec::new()
        } else {
            self.unenroll_all(&cookies)?
        };
        self.remove_orphan_metadata()?;
        Ok(doomed
            .into_iter()
            .zip(enrolled)
            .filter_map(|(pod, was)| was.then_some(pod))
            .collect())
    }

    /// Removes the metadata of pods `cookies`, if any.
    pub(super) fn remove_metadata(&mut self, cookies: &[NetnsCookie]) -> Result<(), Error> {
        for cookie in cookies {
            ignore_missing(self.pod_meta.remove(&cookie.0)).map_err(map_error(POD_META, "remove"))?;
        }
        Ok(())
    }

    /// Removes metadata whose pod is not enrolled (its ADD failed after recording it).
    pub(super) fn remove_orphan_metadata(&mut self) -> Result<(), Error> {
        let enrolled: BTreeSet<NetnsCookie> = self.pods()?.into_iter().map(|(c, _)| c).collect();
        let orphans: Vec<NetnsCookie> = keys_of(self.pod_meta.keys(), POD_META)?
            .into_iter()
            .map(NetnsCookie)
            .filter(|c| !enrolled.contains(c))
            .collect();
        self.remove_metadata(&orphans)
    }

    /// Where the pod's `sk_lookup` link says its network namespace is.
    ///
    /// # Errors
    /// When the link pin cannot be opened or its info read.
    pub fn netns_link(&self, cookie: NetnsCookie) -> Result<NetnsLink, Error> {
        Ok(match self.netns_of(cookie)? {
            None => NetnsLink::NotPinned,
            Some(None) => NetnsLink::Gone,
            Some(Some(inode)) => NetnsLink::Attached { inode },
        })
    }

    /// How many entries each map holds, by name, in pin order (the per-CPU `STATS` array always
    /// holds its `STAT_SLOTS` slots).
    ///
    /// # Errors
    /// [`Error::Map`] when a map cannot be read.
    pub fn entry_counts(&self) -> Result<Vec<(&'static str, usize)>, Error> {
        Ok(vec![
            (POD_CONFIG, keys_of(self.pod_config.keys(), POD_CONFIG)?.len()),
            (OWNERS, keys_of(self.owners.keys(), OWNERS)?.len()),
            (PORTS, keys_of(self.ports.keys(), PORTS)?.len()),
            (CIDRS, keys_of(self.cidrs.keys(), CIDRS)?.len()),
            (
                ORIG_BY_COOKIE,
                keys_of(self.orig_by_cookie.keys(), ORIG_BY_COOKIE)?.len(),
            ),
            (
                ORIG_BY_PAIR,
                keys_of(self.orig_by_pair.keys(), ORIG_BY_PAIR)?.len(),
            ),
            (STATS, STAT_SLOTS as usize),
            (
                INBOUND_LISTENERS,
                keys_of(self.inbound_listeners.keys(), INBOUND_LISTENERS)?.len(),
            ),
            (POD_META, keys_of(self.pod_meta.keys(), POD_META)?.len()),
        ])
    }
}
