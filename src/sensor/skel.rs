//! The libbpf-rs skeleton generated from bpf/sensor.bpf.c by build.rs (never edited by hand),
//! and `types`, the Rust image of bpf/events.h's structs and enums.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used
)]
#![allow(dead_code, non_camel_case_types, unsafe_op_in_unsafe_fn)]
include!(concat!(env!("OUT_DIR"), "/sensor.skel.rs"));
