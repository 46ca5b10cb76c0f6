//! The configuration parser: any text gives a configuration or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = respmesh_api::proxy::ProxyConfig::from_yaml(text) {
            // A valid configuration redacts and serializes without error.
            let _ = serde_json::to_string(&cfg.redacted());
        }
    }
});
