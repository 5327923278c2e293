//! Empty library target: it lets `tracer` name this crate as a build-dependency so cargo
//! rebuilds the kernel object when these sources change (see aya-build).
#![no_std]
