//! A kernel buffer (`kvmalloc`) owned by Rust.
use crate::kapi;

/// Owned, zero-initialised kernel memory.
pub struct KBuf {
    ptr: *mut u8,
    len: usize,
}

impl KBuf {
    /// Allocate `len` zeroed bytes (None if out of memory).
    pub fn zeroed(len: usize) -> Option<KBuf> {
        let ptr = kapi::alloc(len.max(1));
        if ptr.is_null() {
            return None;
        }
        // SAFETY: fresh allocation of at least len bytes.
        unsafe { core::ptr::write_bytes(ptr, 0, len) };
        Some(KBuf { ptr, len })
    }

    /// Contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes while self lives.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Contents, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for KBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by kapi::alloc in zeroed(), freed once.
        unsafe { kapi::free(self.ptr) }
    }
}
