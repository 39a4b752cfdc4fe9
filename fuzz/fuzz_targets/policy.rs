//! The gateway both query targets run against: a name list and an IP list blocked for
//! `staff` (127.0.0.2 and ::1), nothing for `devices` (127.0.0.3), every other client refused;
//! an upstream that is never asked (the targets stop before anything is sent).
use std::sync::Arc;

use portvakt::{Config, Gateway, Metrics, Policy};

pub fn gateway() -> Gateway {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let text = format!(
        "lists.tiktok.files = [\"{fixtures}/tiktok.txt\"]\n\
         lists.ips.files = [\"{fixtures}/telegram-ip.txt\"]\n\
         lists.ips.kind = \"ip\"\n\
         segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\", \"::1/128\"], block = [\"tiktok\", \"ips\"] }},\n\
                    {{ name = \"devices\", networks = [\"127.0.0.3/32\"] }}]\n\
         cache.max_entries = 1000\n\
         [[upstream]]\nservers = [\"127.0.0.1:9\"]\n"
    );
    let metrics = Arc::new(Metrics::new());
    let config = Config::parse("fuzz.toml", &text).expect("the fuzz config");
    let policy = Policy::compile(config, &metrics, 1).expect("the fuzz policy");
    Gateway::new(policy, metrics)
}
