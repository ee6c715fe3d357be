//! Errors of the VMM.

use std::path::PathBuf;

/// Everything that can go wrong while setting up or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` does not exist or cannot be opened.
    #[error(
        "cannot open /dev/kvm ({0}): this machine has no usable KVM; \
         run agents in the simulator instead (`tetd-pack run`)"
    )]
    NoKvm(#[source] std::io::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The configuration is invalid.
    #[error("invalid VM configuration: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is not a loadable 64-bit bzImage.
    #[error("kernel {path}: {msg}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// Guest memory could not be set up or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// A zone-slot operation was refused.
    #[error("zone slot: {0}")]
    Zone(String),
    /// Host OS error (threads, signals, eventfd, mmap).
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of the VMM.
pub type Result<T> = std::result::Result<T, VmmError>;

pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { op, source }
}
