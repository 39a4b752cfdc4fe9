//! What places and limits a client: the segment its address or listener puts it in, the
//! client a load balancer's PROXY v2 header names, the per-address rate limit over UDP, and
//! the per-client budget of connections and queries in flight. Knows no policy or transport.

pub mod budget;
pub mod proxy;
pub mod ratelimit;
pub mod segment;
