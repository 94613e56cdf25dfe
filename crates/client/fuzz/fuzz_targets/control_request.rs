#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hotline_client::fuzzing::control_request(data));
