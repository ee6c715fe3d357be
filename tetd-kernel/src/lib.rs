//! TETD-G core: `no_std` loader, registry and zone logic shared by the Linux
//! kernel module (`module/`) and the host simulator.
#![no_std]
