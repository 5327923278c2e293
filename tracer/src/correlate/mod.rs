//! Grouping hops into packets (by skb) and packets into flows (by 5-tuple, across NAT).

pub mod flow;
pub mod packet;
pub mod transmits;

pub use flow::{FlowTable, FlowView, Rewrite};
pub use packet::{Packet, PacketTracker};
