//! Guest RAM of the QEMU engine: a memfd this process maps and QEMU uses as
//! the machine's RAM backend (`memory-backend-file,share=on`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// The guest's RAM as a shared memory file: GPA `x` (below
/// [`super::MAX_MEM_MIB`] MiB) is file offset `x`.
pub struct GuestRam {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by the value and only read through bounds-
// checked copies (`read`); the guest may write it concurrently, which a
// byte copy tolerates.
unsafe impl Send for GuestRam {}
// SAFETY: `&GuestRam` only allows `read` (a copy out of the mapping).
unsafe impl Sync for GuestRam {}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam").field("len", &self.len).finish()
    }
}

impl GuestRam {
    /// A zero-filled RAM file of `len` bytes, mapped read-only here.
    pub fn new(len: u64) -> io::Result<GuestRam> {
        let size = usize::try_from(len)
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad guest RAM size"))?;
        // SAFETY: NUL-terminated literal name, valid flags.
        let fd = unsafe { libc::memfd_create(c"tetd-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on the fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared read-only mapping of the whole file at an
        // address the kernel picks; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(GuestRam {
            fd,
            base,
            len: size,
        })
    }

    /// The memfd (QEMU opens it as `/proc/<pid>/fd/<fd>`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies guest RAM at `gpa` into `buf`; an error if any byte lies
    /// outside RAM.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = gpa.checked_add(buf.len() as u64);
        match end {
            Some(e) if e <= self.len as u64 => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "guest RAM [{gpa:#x}, +{:#x}) outside [0, {:#x})",
                        buf.len(),
                        self.len
                    ),
                ))
            }
        }
        // SAFETY: [gpa, gpa + len) is inside the mapping (checked above); the
        // source may change concurrently (guest writes), so it is copied
        // without forming a reference to it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(gpa as usize),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`; `read` copies,
        // so no reference into it survives.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_file_holds_and_checks_bounds() {
        let ram = GuestRam::new(8192).unwrap();
        // Write through the file, as QEMU would through its own mapping.
        // SAFETY: pwrite into our own memfd.
        let n = unsafe { libc::pwrite(ram.raw_fd(), b"guest".as_ptr().cast(), 5, 4096) };
        assert_eq!(n, 5);
        let mut b = [0u8; 5];
        ram.read(4096, &mut b).unwrap();
        assert_eq!(&b, b"guest");
        assert!(ram.read(8190, &mut b).is_err());
        assert!(ram.read(u64::MAX - 1, &mut b).is_err());
        ram.read(8187, &mut b).unwrap();
    }
}
