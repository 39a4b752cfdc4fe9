pub mod lists;
pub mod name;
pub mod wire;
pub mod config;
