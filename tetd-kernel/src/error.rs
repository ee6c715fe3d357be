//! Why an image could not be loaded.

use core::fmt;

use tetd::abi::Error;
use tetd::image::ImageError;

/// A load failure; `Display` says what and where, [`LoadError::code`] gives
/// the ABI status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// The image is malformed (names the field at fault).
    Image(ImageError),
    /// The trust policy rejected the image: `Unsigned`, `BadSignature`,
    /// `SignerNotAllowed`.
    Verify(Error),
    /// The image contains an admin agent but is not signed by a trusted key
    /// with the `admin` attribute.
    AdminNotTrusted {
        /// The first admin agent's id.
        id: u32,
    },
    /// An agent id of the image is already registered by a loaded image.
    DuplicateAgentId {
        /// The id.
        id: u32,
    },
    /// No free image or agent slot.
    TableFull {
        /// Which table.
        what: &'static str,
        /// Its capacity.
        capacity: usize,
    },
    /// The zone would be too large for this machine.
    ZoneTooLarge {
        /// Bytes the layout needs (saturated).
        size: u64,
    },
    /// A platform operation failed.
    Platform {
        /// Which operation.
        op: &'static str,
        /// Its error.
        error: Error,
    },
    /// A relocation target could not be computed for the chosen base.
    Relocation {
        /// Offset of the relocated slot in the image.
        offset: u64,
    },
}

impl LoadError {
    /// The ABI error code.
    pub fn code(&self) -> Error {
        match self {
            LoadError::Image(e) => e.code(),
            LoadError::Verify(e) => *e,
            LoadError::AdminNotTrusted { .. } => Error::Denied,
            LoadError::DuplicateAgentId { .. } => Error::DuplicateAgentId,
            LoadError::TableFull { .. } => Error::TableFull,
            LoadError::ZoneTooLarge { .. } => Error::TooLarge,
            LoadError::Platform { error, .. } => *error,
            LoadError::Relocation { .. } => Error::BadRelocation,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Image(e) => write!(f, "{e}"),
            LoadError::Verify(Error::Unsigned) => write!(
                f,
                "image is not signed and the policy requires a signature"
            ),
            LoadError::Verify(Error::SignerNotAllowed) => {
                write!(f, "image signer is not in the allow-list")
            }
            LoadError::Verify(Error::BadSignature) => {
                write!(f, "image signature does not verify")
            }
            LoadError::Verify(e) => write!(f, "image rejected by the trust policy: {e}"),
            LoadError::AdminNotTrusted { id } => write!(
                f,
                "agent {id} is an admin agent: its image must be signed by a trusted key with the `admin` attribute"
            ),
            LoadError::DuplicateAgentId { id } => {
                write!(f, "agent id {id} is already registered by a loaded image")
            }
            LoadError::TableFull { what, capacity } => {
                write!(f, "{what} table full ({capacity} entries)")
            }
            LoadError::ZoneTooLarge { size } => {
                write!(f, "agent zone of {size:#x} bytes is too large")
            }
            LoadError::Platform { op, error } => write!(f, "{op} failed: {error}"),
            LoadError::Relocation { offset } => write!(
                f,
                "relocation at image offset {offset:#x} overflows at the chosen base"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for LoadError {}

impl From<ImageError> for LoadError {
    fn from(e: ImageError) -> Self {
        LoadError::Image(e)
    }
}
