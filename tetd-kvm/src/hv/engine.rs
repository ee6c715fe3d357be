//! Choosing an engine and running a guest with TETD-H attached.
//!
//! | engine | when | hypercall transport | blocked zones |
//! |---|---|---|---|
//! | `kvm` ([`crate::vmm`]) | `/dev/kvm` runs guest kernels natively | port I/O exit with registers (`SIM_HYPERCALL_PORT`) | taken away (no memory slot): accesses trap, are reported |
//! | `qemu` ([`crate::qemu`]) | no `/dev/kvm`, or KVM emulates guest kernels (PVM) | byte frames through a 16550 ([`tetd::abi::uart`]) | taken away (pages out of the zone file QEMU maps): reads see zeroes, writes are discarded, accesses are found afterwards and reported |
//!
//! `auto` picks `kvm` unless `/dev/kvm` is unusable or is the PVM backend
//! ([`crate::vmm::kvm_emulates_guest_kernel`]), and says why.

use std::fmt;

use super::{TetdHandler, TetdOptions, TetdReport};
use crate::qemu;
use crate::vmm::{self, VmConfig, VmOutcome, VmmError};

/// A way to run the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// The project's KVM VMM.
    Kvm,
    /// QEMU with software emulation (TCG).
    Qemu,
}

impl Engine {
    /// `kvm` / `qemu`.
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Kvm => "kvm",
            Engine::Qemu => "qemu",
        }
    }

    /// Whether this engine really takes blocked zones away from the guest
    /// (both do: KVM deletes the zone's memory slot, QEMU's zone pages are
    /// taken out of the file QEMU maps; docs/engines.md).
    pub const fn enforces_blocking(self) -> bool {
        self.blocked_read_value().is_some()
    }

    /// What a guest read of a blocked zone returns on this engine: all-ones
    /// on KVM (no memory there: an MMIO exit the VMM answers), zero on QEMU
    /// (a hole in the zone file). `None` would be an engine that does not
    /// take zones away.
    pub const fn blocked_read_value(self) -> Option<u64> {
        match self {
            Engine::Kvm => Some(u64::MAX),
            Engine::Qemu => Some(0),
        }
    }

    /// When this engine reports a guest access to a blocked zone.
    pub const fn violation_timing(self) -> &'static str {
        match self {
            Engine::Kvm => "reported as it happens (the access exits to the VMM)",
            Engine::Qemu => {
                "found afterwards (the page is present in the zone file again) and reported at the zone's next window, its removal or the TD's end"
            }
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineChoice {
    /// `kvm`.
    Kvm,
    /// `qemu`.
    Qemu,
    /// `auto`: KVM where it runs guest kernels natively, else QEMU.
    #[default]
    Auto,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(EngineChoice::Kvm),
            "qemu" => Ok(EngineChoice::Qemu),
            "auto" => Ok(EngineChoice::Auto),
            other => Err(format!(
                "unknown engine {other:?} (expected kvm, qemu or auto)"
            )),
        }
    }
}

/// The engine picked and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The engine.
    pub engine: Engine,
    /// Why (one line).
    pub reason: String,
}

/// Picks the engine for `choice` on this host.
///
/// Errors: `kvm` without a usable `/dev/kvm` ([`VmmError::NoKvm`]); `qemu`
/// (or `auto` falling back to it) without QEMU ([`VmmError::Config`]).
pub fn select_engine(choice: EngineChoice) -> Result<Selection, VmmError> {
    let kvm = vmm::kvm_available();
    let emulated = kvm.is_ok() && vmm::kvm_emulates_guest_kernel();
    let need_qemu = |reason: String| match qemu::qemu_binary() {
        Ok(_) => Ok(Selection {
            engine: Engine::Qemu,
            reason,
        }),
        Err(e) => Err(VmmError::Config(format!("{reason}, but {e}"))),
    };
    match choice {
        EngineChoice::Kvm => match kvm {
            Err(e) => Err(VmmError::NoKvm(std::io::Error::other(e))),
            Ok(()) if emulated => Ok(Selection {
                engine: Engine::Kvm,
                reason: "requested; warning: this /dev/kvm is the PVM backend, which emulates \
                         guest kernel code (a stock kernel cannot boot; see tetd-kvm/guest/README.md)"
                    .into(),
            }),
            Ok(()) => Ok(Selection {
                engine: Engine::Kvm,
                reason: "requested".into(),
            }),
        },
        EngineChoice::Qemu => need_qemu("requested".into()),
        EngineChoice::Auto => match kvm {
            Err(e) => need_qemu(format!("auto: {e}")),
            Ok(()) if emulated => need_qemu(
                "auto: /dev/kvm is the PVM backend (kvm_pvm), which runs a stock guest kernel \
                 through KVM's instruction emulator and cannot boot it"
                    .into(),
            ),
            Ok(()) => Ok(Selection {
                engine: Engine::Kvm,
                reason: "auto: /dev/kvm runs guest kernels natively".into(),
            }),
        },
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The engine that ran it.
    pub engine: Engine,
    /// How the guest ended, its console, timing.
    pub outcome: VmOutcome,
    /// TETD-H's state at the end.
    pub report: TetdReport,
}

/// Boots `config` on `engine` with a fresh TETD-H (`opts`) answering the
/// guest's hypercalls, and waits for the end.
pub fn run_guest(
    engine: Engine,
    config: VmConfig,
    opts: TetdOptions,
) -> Result<GuestRun, VmmError> {
    let os = |source| VmmError::Os {
        op: "TETD-H zone pool",
        source,
    };
    let (outcome, report) = match engine {
        Engine::Kvm => {
            let h = TetdHandler::kvm(&opts).map_err(os)?;
            let (out, h) = vmm::run_vm(config, h)?;
            (out, h.report())
        }
        Engine::Qemu => {
            let h = TetdHandler::qemu(&opts).map_err(os)?;
            let (out, h) = qemu::run_qemu(config, h)?;
            (out, h.report())
        }
    };
    Ok(GuestRun {
        engine,
        outcome,
        report,
    })
}
