//! Image format (in progress).
