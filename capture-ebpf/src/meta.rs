//! Who enrolled a pod and as what: the CNI attachment (container id, interface), the pod's
//! Kubernetes name and its network namespace's path, kept node-side in the userspace-only map
//! [`POD_META`](capture_ebpf_common::POD_META) under the pod's netns cookie.
//!
//! The programs never read it. It is written by the front end that enrolls (capture-cni's
//! ADD), removed with the pod's other entries ([`Node::unenroll`](crate::Node::unenroll),
//! [`Node::gc`](crate::Node::gc)), and read by CNI GC
//! ([`Node::unenroll_unless`](crate::Node::unenroll_unless)) and `capture-init ebpf pods`.
//! A map rather than files: it lives and dies with the pins, needs no other directory on the
//! node, and is written under the node lock like every other per-pod entry.

use std::path::PathBuf;

use capture_ebpf_common::{
    META_CONTAINER_ID_MAX, META_IFNAME_MAX, META_NETNS_PATH_MAX, META_POD_NAME_MAX, META_POD_NAMESPACE_MAX,
    META_SOURCE_CNI, PodMeta,
};

use crate::Error;

/// A pod's enrollment as a CNI plugin saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMetadata {
    /// The CNI container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The CNI interface name (`CNI_IFNAME`).
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`, when the runtime gave one.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`, when the runtime gave one.
    pub pod_name: Option<String>,
    /// The network namespace's path as the runtime gave it (`CNI_NETNS`).
    pub netns_path: Option<PathBuf>,
}

impl PodMetadata {
    /// The map value, every text checked to fit its field.
    ///
    /// # Errors
    /// [`Error::MetadataTooLong`] naming the field.
    pub(crate) fn to_value(&self) -> Result<PodMeta, Error> {
        let mut value = PodMeta {
            source: META_SOURCE_CNI,
            container_id_len: 0,
            ifname_len: 0,
            pod_namespace_len: 0,
            pod_name_len: 0,
            netns_path_len: 0,
            _pad: [0; 4],
            container_id: [0; META_CONTAINER_ID_MAX],
            ifname: [0; META_IFNAME_MAX],
            pod_namespace: [0; META_POD_NAMESPACE_MAX],
            pod_name: [0; META_POD_NAME_MAX],
            netns_path: [0; META_NETNS_PATH_MAX],
        };
        let netns_path = self.netns_path.as_ref().map(|p| p.to_string_lossy().into_owned());
        value.container_id_len = put(&mut value.container_id, "container id", &self.container_id)?;
        value.ifname_len = put(&mut value.ifname, "interface name", &self.ifname)?;
        value.pod_namespace_len = put(
            &mut value.pod_namespace,
            "pod namespace",
            self.pod_namespace.as_deref().unwrap_or(""),
        )?;
        value.pod_name_len = put(
            &mut value.pod_name,
            "pod name",
            self.pod_name.as_deref().unwrap_or(""),
        )?;
        value.netns_path_len = put(
            &mut value.netns_path,
            "network namespace path",
            netns_path.as_deref().unwrap_or(""),
        )?;
        Ok(value)
    }

    /// What a map value says; a length beyond its field (a corrupted entry) is cut to it.
    pub(crate) fn from_value(value: &PodMeta) -> PodMetadata {
        let text = |bytes: &[u8], len: u16| {
            let len = usize::from(len).min(bytes.len());
            String::from_utf8_lossy(&bytes[..len]).into_owned()
        };
        let given = |s: String| (!s.is_empty()).then_some(s);
        PodMetadata {
            container_id: text(&value.container_id, value.container_id_len),
            ifname: text(&value.ifname, value.ifname_len),
            pod_namespace: given(text(&value.pod_namespace, value.pod_namespace_len)),
            pod_name: given(text(&value.pod_name, value.pod_name_len)),
            netns_path: given(text(&value.netns_path, value.netns_path_len)).map(PathBuf::from),
        }
    }

    /// `namespace/name`, with `-` for what is not known.
    pub fn pod(&self) -> String {
        format!(
            "{}/{}",
            self.pod_namespace.as_deref().unwrap_or("-"),
            self.pod_name.as_deref().unwrap_or("-")
        )
    }
}

/// Copies `text` into `field`, returning its length.
fn put(field: &mut [u8], name: &'static str, text: &str) -> Result<u16, Error> {
    let bytes = text.as_bytes();
    if bytes.len() > field.len() {
        return Err(Error::MetadataTooLong {
            field: name,
            value: text.to_owned(),
            max: field.len(),
        });
    }
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(u16::try_from(bytes.len()).expect("fields are shorter than 64 KiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_map_value() {
        let meta = PodMetadata {
            container_id: "c0ffee0123".into(),
            ifname: "eth0".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("cart-1".into()),
            netns_path: Some("/var/run/netns/cni-1".into()),
        };
        assert_eq!(PodMetadata::from_value(&meta.to_value().unwrap()), meta);
        let bare = PodMetadata {
            container_id: "c".into(),
            ifname: "eth0".into(),
            ..PodMetadata::default()
        };
        assert_eq!(PodMetadata::from_value(&bare.to_value().unwrap()), bare);
        assert_eq!(bare.pod(), "-/-");
    }

    #[test]
    fn a_value_too_long_for_its_field_is_named() {
        let meta = PodMetadata {
            container_id: "c".into(),
            ifname: "a-very-long-interface".into(),
            ..PodMetadata::default()
        };
        let e = meta.to_value().unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface name \"a-very-long-interface\" is 21 bytes, more than the 16 the eBPF pod metadata holds"
        );
    }
}
