//! Types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree byte for byte;
//! the layout tests at the bottom pin the sizes userspace relies on when decoding.
#![no_std]

pub mod config;
pub mod event;
pub mod flood;

pub use config::{Filter, HeaderFields, KernelOffsets};
pub use event::{HopEvent, HopKind, counter};
