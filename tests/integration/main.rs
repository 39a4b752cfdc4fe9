//! Integration tests: the real gateway on loopback, clients of different segments played by
//! different source addresses, over real UDP and TCP. One binary, so it links once.

mod audit;
mod binary;
mod burst;
mod bypass;
mod catalogue;
mod doq;
mod dot;
mod encrypted;
mod expectations;
mod export;
mod failover;
mod fairness;
mod forwarding;
mod harness;
mod identity;
mod ip_lists;
mod list_data;
mod metrics;
mod modules;
mod proxy;
mod ratelimit;
mod reload;
mod remote;
mod replicas;
mod responses;
mod segments;
mod spoofing;
mod stale;
mod stalls;
mod tcp_limits;
mod wire;
