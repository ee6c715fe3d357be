//! TETD-H: host side of TETD-rs.

pub mod bench;
pub mod demo;
pub mod host;
pub mod hv;
pub mod leaves;
pub mod notify;
pub mod qemu;
pub mod rtmr;
pub mod seam;
pub mod seam_model;
pub mod session;
pub mod shell;
pub mod tdx_seamcall;
pub mod vmm;
pub mod zone_alloc;

pub use host::{
    AgentEntry, AgentId, AgentState, GuestReader, Host, HostError, TdConfig, TdId, TdState, Zone,
};
pub use seam::{SeamError, SeamOps, ZoneRange};
pub use seam_model::SeptModel;
