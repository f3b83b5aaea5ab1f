#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| diffuse_fuzz::targets::tokenizer(data));
