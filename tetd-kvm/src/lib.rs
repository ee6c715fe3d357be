//! TETD-H: host side of TETD-rs.
