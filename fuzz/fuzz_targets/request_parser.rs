//! Client input: any bytes, in any split, must parse, wait for more, or fail with a protocol
//! error; never panic, never loop, never report a frame longer than the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respmesh_proxy::resp::Limits;
use respmesh_proxy::resp::request::{Parsed, RequestParser};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input is split, exercising resumption.
    let Some((&cut, data)) = data.split_first() else { return };
    let limits = Limits { max_bulk_length: 1 << 20, max_array_length: 1024, max_inline_length: 4096, max_nesting_depth: 32 };
    for authenticated in [true, false] {
        let mut p = RequestParser::new(limits);
        let mut off = 0;
        let cut = (cut as usize).min(data.len());
        let mut first = true;
        while off < data.len() {
            let end = if first { (off + cut).min(data.len()) } else { data.len() };
            match p.parse(&data[off..end], authenticated) {
                Ok(Parsed::Multibulk { len, argc }) => {
                    assert!(len > 0 && off + len <= end);
                    for i in 0..argc.min(8) {
                        assert!(p.arg(&data[off..off + len], i).is_some());
                    }
                    off += len;
                }
                Ok(Parsed::Inline { len, .. }) | Ok(Parsed::Empty { len }) => {
                    assert!(len > 0 && off + len <= end);
                    off += len;
                }
                Ok(Parsed::Incomplete { .. }) => {
                    if !first {
                        break;
                    }
                }
                Err(_) => break,
            }
            first = false;
        }
    }
});
