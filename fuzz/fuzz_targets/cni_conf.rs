//! capture-cni's decoding, from stdin (and `CNI_ARGS`) to a `CaptureSpec`: the network
//! configuration with its `capture` settings, `runtimeConfig` pod annotations and `prevResult`,
//! then pod selection and the annotations over the settings. No panic; every error is a
//! one-line message with a CNI code; every accepted spec keeps `capture_fuzz::check_spec`.
//!
//! Input: the configuration JSON, optionally after a first line `CNI_ARGS=<value>`.

#![no_main]

use capture_cni::Error;
use capture_cni::env::{CniArgs, Command};
use capture_cni::plugin::{add_result, check_prev_result, decode, version_report};
use capture_cni::pod::{Pod, PodCapture, skip_reason};
use capture_core::Detected;
use capture_fuzz::check_spec;
use libfuzzer_sys::fuzz_target;

/// What a Kubernetes runtime passes.
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d9";

fn one_line(e: &Error) {
    let reply = e.reply("1.1.0");
    let msg = reply["msg"].as_str().expect("msg is a string");
    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    assert!(e.cni_code() > 0);
}

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = match data.strip_prefix(b"CNI_ARGS=") {
        Some(rest) => match rest.iter().position(|b| *b == b'\n') {
            Some(end) => (
                String::from_utf8_lossy(&rest[..end]).into_owned(),
                &rest[end + 1..],
            ),
            None => (String::from_utf8_lossy(rest).into_owned(), &b""[..]),
        },
        None => (POD_ARGS.to_owned(), data),
    };
    let _ = version_report(stdin);
    let args = match CniArgs::parse(&args) {
        Ok(args) => args,
        Err(e) => return one_line(&e),
    };
    let request = match decode(stdin, Command::Add) {
        Ok(request) => request,
        Err(failure) => return one_line(&failure.error),
    };
    let conf = &request.conf;
    if let Err(e) = check_prev_result(conf.prev_result.as_ref(), request.version) {
        one_line(&e);
    }
    let _ = add_result(conf.prev_result.as_ref(), request.version);
    let pod = Pod::new(&args, conf);
    let _ = (skip_reason(conf, &pod), pod.display_name());
    let capture = match PodCapture::new(&conf.capture, pod.annotations) {
        Ok(capture) => capture,
        Err(e) => {
            assert_eq!(e.cni_code(), 7, "{e}");
            return one_line(&e);
        }
    };
    for ipv6 in [false, true] {
        let detected = Detected {
            ipv6,
            nameservers: Vec::new(),
        };
        match capture.to_spec(&detected) {
            Ok((spec, _warnings)) => check_spec(&spec),
            Err(e) => {
                // Rejected settings or annotations are configuration errors, never ours.
                assert_eq!(e.cni_code(), 7, "{e}");
                one_line(&e);
            }
        }
    }
});
