//! TETD-G core: the `no_std` loader, registry and call dispatch shared by the
//! Linux kernel module (`module/`) and the host simulator ([`sim`], feature
//! `sim`).
//!
//! ```text
//! bytes ─ Image::parse ─ verify_image(policy) ─ ZoneLayout ─ Platform::zone_alloc
//!       ─ copy segments, zero-fill ─ relocate (base + addend) ─ Platform::zone_protect
//!       ─ Registry (ids → entry in zone)
//! call(id, input) ─ frame + input into the zone ─ Platform::run ─ arch::enter
//!       ─ agent ─ (services: log, random, time, abort, register_entry, admin)
//!       ─ CallReport (status, output, timing, fault) ─ stats ─ /proc/tetdg_info
//! ```
//!
//! * [`layout`]: where everything goes in a zone and with which protection.
//! * [`platform`]: the [`Platform`] trait the kernel module and the simulator
//!   implement (zone memory, how to run an entry, random/time/log).
//! * [`Registry`]: load / lookup / unload / call / enable / disable.
//! * [`arch`]: the x86-64 call gate (`enter` / `abort`).
//! * [`info`]: the `/proc/tetdg_info` text.
//!
//! The core never allocates: the registry has fixed capacity and every zone
//! comes from [`Platform::zone_alloc`].
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("tetd-kernel supports x86-64 only");

pub mod arch;
mod dispatch;
mod error;
pub mod info;
pub mod layout;
pub mod platform;
mod registry;
#[cfg(feature = "sim")]
pub mod sim;

pub use dispatch::{CallOptions, CallReport, FaultReport, ACTIVE_CALLS, MAX_LOG_LEN};
pub use error::LoadError;
pub use layout::{Protection, ZoneLayout};
pub use platform::{AgentEvent, FaultInfo, Platform, RunOutcome, RunRequest, ZoneMem, ZoneRequest};
pub use registry::{
    Agent, AgentStats, ImageId, LoadOptions, LoadedImage, Registry, MAX_DYNAMIC_PER_IMAGE,
};
