//! Module-wide state. Every Rust entry point runs with the module mutex
//! held (see tetdg_main.c), so plain statics behind [`Shared`] suffice.
use crate::tramp::Shared;

/// Counters shown by INFO and /proc/tetdg_info.
pub struct Stats {
    /// Hypercall transport (`tetd::abi::ioctl::TRANSPORT_*`).
    pub transport: u32,
    /// The TEST ioctl is enabled.
    pub test_enabled: bool,
    /// Unsigned images are refused (module parameter `require_signed`).
    pub require_signed: bool,
    /// Watchdog budget of calls that give none (module parameter, ms; 0 = none).
    pub default_timeout_ms: u64,
    /// Calls served (test and agent calls).
    pub calls: u64,
    /// Calls ended by a fault.
    pub faults: u64,
    /// Zone bytes mapped.
    pub zone_bytes: u64,
    /// Agent currently running (for log prefixes), 0 if none.
    pub current_agent: u32,
}

static STATS: Shared<Stats> = Shared::new(Stats {
    transport: 0,
    test_enabled: false,
    require_signed: false,
    default_timeout_ms: 0,
    calls: 0,
    faults: 0,
    zone_bytes: 0,
    current_agent: 0,
});

/// The module state.
#[allow(clippy::mut_from_ref)]
pub fn stats() -> &'static mut Stats {
    // SAFETY: only used with the module mutex held (single-threaded access),
    // and no reference is kept across calls.
    unsafe { &mut *STATS.get() }
}
