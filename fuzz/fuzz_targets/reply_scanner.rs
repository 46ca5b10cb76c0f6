//! Upstream replies: any bytes must be delimited, wait for more, or be rejected; the stack is
//! bounded by the nesting limit; never a panic or an out-of-bounds frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respmesh_proxy::resp::reply::{ReplyScanner, Scan};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let cut = (cut as usize).min(data.len());
    let mut s = ReplyScanner::new(16);
    let mut off = 0;
    // Scan a prefix first (resumption), then the rest.
    if let Ok(Scan::Complete { len }) = s.scan(&data[..cut]) {
        assert!(len <= cut);
        off = len;
    }
    while off < data.len() {
        match s.scan(&data[off..]) {
            Ok(Scan::Complete { len }) => {
                assert!(len > 0 && off + len <= data.len());
                off += len;
            }
            Ok(Scan::Incomplete { .. }) | Err(_) => break,
        }
    }
});
