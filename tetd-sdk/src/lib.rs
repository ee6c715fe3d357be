//! # TETD-rs SDK (`tetd`)
//!
//! Everything an agent, the packer, the guest module (TETD-G) and the host
//! extension (TETD-H) share lives here, once:
//!
//! * [`abi`] — hypercall leaves, register convention, status/error codes,
//!   the agent descriptor, the call frame and the services table;
//! * [`image`] — the `.tetd` image format (parse, check, write);
//! * [`Call`] — the context an agent handler sees.
//!
//! Agents are written as
//!
//! ```ignore
//! #![no_std]
//! #[tetd::agent(id = 1, name = "echo")]
//! fn echo(ctx: &mut tetd::Call) -> tetd::Result<()> {
//!     let input = ctx.input();
//!     ctx.output(input)
//! }
//! ```
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod abi;
mod call;
pub mod image;

pub use abi::{Error, Mode};
pub use call::Call;
pub use tetd_macros::agent;

/// Result type of agent handlers and SDK functions.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(feature = "agent")]
mod panic;

/// Items used by code that `#[tetd::agent]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::call::dispatch;
}
