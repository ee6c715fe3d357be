//! The context an agent handler sees, and the dispatch used by the
//! trampolines `#[tetd::agent]` generates.

use core::sync::atomic::{AtomicPtr, Ordering};

use crate::abi::{self, AdminOp, AgentEntry, CallFrame, Error, Services, ABI_VERSION};
use crate::Result;

/// The frame of the call in progress (for the panic handler). One image runs
/// one call at a time: the runtime serialises calls per agent image.
static CURRENT: AtomicPtr<CallFrame> = AtomicPtr::new(core::ptr::null_mut());

/// The frame of the call in progress, if any.
#[cfg(feature = "agent")]
pub(crate) fn current_frame() -> *mut CallFrame {
    CURRENT.load(Ordering::Acquire)
}

/// One call of an agent: its input, its output buffer and the runtime
/// services.
pub struct Call<'a> {
    frame: &'a mut CallFrame,
}

impl<'a> Call<'a> {
    /// Wrap a frame.
    ///
    /// # Safety
    /// `frame` must satisfy the [`CallFrame`] contract: `input` valid for
    /// `input_len` bytes, `output` valid for `output_cap` bytes and not
    /// aliasing `input`, `services` valid for the whole call.
    pub unsafe fn from_frame(frame: &'a mut CallFrame) -> Self {
        Call { frame }
    }

    /// The id this call was made to.
    pub fn agent_id(&self) -> u32 {
        self.frame.agent_id
    }

    /// True when running in collaborative mode (inside the secret zone).
    pub fn is_collaborative(&self) -> bool {
        self.frame.flags & abi::CALL_FLAG_COLLABORATIVE != 0
    }

    /// The input bytes, valid for the whole call (`'a`), so they can be
    /// passed straight to [`Call::output`]: `let i = ctx.input(); ctx.output(i)`.
    pub fn input(&self) -> &'a [u8] {
        if self.frame.input_len == 0 || self.frame.input.is_null() {
            return &[];
        }
        // SAFETY: the runtime guarantees `input` is valid for `input_len`
        // bytes for the duration of the call (`'a`, contract of
        // `from_frame`) and that it does not alias the output buffer, the
        // only memory `Call` hands out mutably.
        unsafe { core::slice::from_raw_parts(self.frame.input, self.frame.input_len as usize) }
    }

    /// Capacity of the output buffer.
    pub fn output_capacity(&self) -> usize {
        self.frame.output_cap as usize
    }

    /// The whole output buffer, to fill in place; finish with
    /// [`Call::set_output_len`].
    pub fn output_buffer(&mut self) -> &mut [u8] {
        if self.frame.output_cap == 0 || self.frame.output.is_null() {
            return &mut [];
        }
        // SAFETY: the runtime guarantees `output` is valid and exclusive for
        // `output_cap` bytes for the duration of the call.
        unsafe {
            core::slice::from_raw_parts_mut(self.frame.output, self.frame.output_cap as usize)
        }
    }

    /// Set how many bytes of the output buffer are the result.
    pub fn set_output_len(&mut self, len: usize) -> Result<()> {
        if len as u64 > self.frame.output_cap {
            return Err(Error::OutputTooLarge);
        }
        self.frame.output_len = len as u64;
        Ok(())
    }

    /// Replace the output with `data`.
    pub fn output(&mut self, data: &[u8]) -> Result<()> {
        let buf = self.output_buffer();
        if data.len() > buf.len() {
            return Err(Error::OutputTooLarge);
        }
        buf[..data.len()].copy_from_slice(data);
        self.set_output_len(data.len())
    }

    /// The agent's heap region inside its zone (zeroed at load, kept across
    /// calls).
    pub fn heap(&mut self) -> &mut [u8] {
        if self.frame.heap_len == 0 || self.frame.heap.is_null() {
            return &mut [];
        }
        // SAFETY: the runtime maps `heap_len` bytes at `heap` for this image
        // only, for the image's lifetime; calls are serialised per image.
        unsafe { core::slice::from_raw_parts_mut(self.frame.heap, self.frame.heap_len as usize) }
    }

    fn services(&self) -> &Services {
        // SAFETY: `services` is non-null and valid for the call (checked in
        // `dispatch`, guaranteed by the runtime).
        unsafe { &*self.frame.services }
    }

    /// Write a log line (shown by the runtime: dmesg, simulator stderr).
    pub fn log(&self, msg: &str) {
        let s = self.services();
        // SAFETY: function pointer provided by the runtime; ptr/len describe `msg`.
        unsafe { (s.log)(s.ctx, msg.as_ptr(), msg.len()) }
    }

    /// Fill `buf` with random bytes from the runtime.
    pub fn random(&self, buf: &mut [u8]) -> Result<()> {
        let s = self.services();
        // SAFETY: function pointer provided by the runtime; ptr/len describe `buf`.
        code_to_result(unsafe { (s.random)(s.ctx, buf.as_mut_ptr(), buf.len()) })
    }

    /// Monotonic time in nanoseconds.
    pub fn time_ns(&self) -> u64 {
        let s = self.services();
        // SAFETY: function pointer provided by the runtime.
        unsafe { (s.time_ns)(s.ctx) }
    }

    /// Register an extra entry point at run time (the counterpart of the C
    /// prototype's `tetdg_agent_call_register(id, handler)`).
    pub fn register_entry(&self, id: u32, name: &str, entry: AgentEntry) -> Result<()> {
        let s = self.services();
        // SAFETY: function pointer provided by the runtime; name ptr/len valid.
        code_to_result(unsafe { (s.register_entry)(s.ctx, id, name.as_ptr(), name.len(), entry) })
    }

    /// The SHA-384 measurement of this agent's own image, as the runtime
    /// that loaded it computed it (`AdminOp::OwnMeasurement`, open to every
    /// agent).
    pub fn measurement(&self) -> Result<[u8; crate::image::MEASUREMENT_LEN]> {
        let mut m = [0u8; crate::image::MEASUREMENT_LEN];
        let n = self.admin(AdminOp::OwnMeasurement, 0, &mut m)?;
        if n != m.len() {
            return Err(Error::Internal);
        }
        Ok(m)
    }

    /// Run an admin operation; returns the number of bytes written to `out`.
    pub fn admin(&self, op: AdminOp, arg: u64, out: &mut [u8]) -> Result<usize> {
        let s = self.services();
        let mut len = 0usize;
        // SAFETY: function pointer provided by the runtime; out ptr/cap valid,
        // `len` is a valid place for the result length.
        let code =
            unsafe { (s.admin)(s.ctx, op as u32, arg, out.as_mut_ptr(), out.len(), &mut len) };
        code_to_result(code)?;
        Ok(len.min(out.len()))
    }
}

fn code_to_result(code: u32) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::from_code(code as u64))
    }
}

/// Run `handler` for the frame the runtime passed to a trampoline; returns
/// the status code (0 = success).
///
/// # Safety
/// `frame` is what the runtime passed to the agent entry: null or a valid
/// [`CallFrame`] satisfying the [`Call::from_frame`] contract.
pub unsafe fn dispatch(frame: *mut CallFrame, handler: fn(&mut Call<'_>) -> Result<()>) -> u32 {
    let body = |frame: &mut CallFrame| {
        // SAFETY: `enter` checked the frame; contract forwarded.
        let mut call = unsafe { Call::from_frame(frame) };
        handler(&mut call)
    };
    // SAFETY: contract forwarded from the caller.
    unsafe { enter(frame, body) }
}

/// [`dispatch`] for agents declared `encrypted`: the session protocol of
/// `docs/encryption.md` wraps the handler (HELLO is answered without it;
/// DATA is decrypted for it and its result encrypted). Plaintext input is
/// rejected with [`Error::Crypto`].
///
/// # Safety
/// As [`dispatch`]; in addition the input area must be writable by the
/// agent (it is: the runtime copies the input into the agent's zone).
#[cfg(feature = "session")]
pub unsafe fn dispatch_encrypted(
    frame: *mut CallFrame,
    handler: fn(&mut Call<'_>) -> Result<()>,
) -> u32 {
    let body = |frame: &mut CallFrame| {
        // SAFETY: `enter` checked the frame; contract forwarded.
        unsafe { crate::session::dispatch_encrypted(frame, handler) }
    };
    // SAFETY: contract forwarded from the caller.
    unsafe { enter(frame, body) }
}

/// Check the frame, publish it for the panic handler, run `body`.
///
/// # Safety
/// As [`dispatch`].
unsafe fn enter(frame: *mut CallFrame, body: impl FnOnce(&mut CallFrame) -> Result<()>) -> u32 {
    if frame.is_null() {
        return Error::BadRequest.code();
    }
    // SAFETY: non-null and valid per this function's contract.
    let frame = unsafe { &mut *frame };
    if frame.abi_version != ABI_VERSION || frame.services.is_null() {
        return Error::BadRequest.code();
    }
    frame.output_len = 0;
    let prev = CURRENT.swap(frame, Ordering::AcqRel);
    let r = body(frame);
    CURRENT.store(prev, Ordering::Release);
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}
