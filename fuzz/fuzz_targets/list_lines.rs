//! The list-line parser: any text gives entries and rejected lines, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let file = portvakt::core::parse(std::path::Path::new("fuzz.txt"), text);
    for rejected in &file.rejected {
        assert!(rejected.line >= 1);
    }
});
