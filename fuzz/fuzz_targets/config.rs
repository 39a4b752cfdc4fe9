//! The config parser: any text gives a config or a list of problems, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = portvakt::Config::parse("fuzz.toml", text);
});
