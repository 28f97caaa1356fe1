//! istio-iptables' settings (as `key=value` lines, see `capture_fuzz::istio_config`) through
//! `IstioConfig::to_spec`: no panic, errors are one line, and every accepted spec renders,
//! applies and compares equal with its own saved rules (`capture_fuzz::check_spec`).

#![no_main]

use capture_fuzz::{FuzzAccounts, check_spec, istio_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (cfg, detected) = istio_config(&text);
    match cfg.to_spec_with(&detected, &FuzzAccounts) {
        Ok((spec, warnings)) => {
            for warning in &warnings {
                let line = warning.to_string();
                assert!(!line.contains('\n'), "{line:?}");
            }
            spec.validate_with(&FuzzAccounts)
                .expect("a spec to_spec accepted validates again");
            check_spec(&spec);
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "error is not one line: {line:?}");
        }
    }
});
