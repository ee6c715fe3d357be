//! Notification of agent activity to host userspace.
//!
//! Every agent event (access, alias, enter, resume, fault, disable, enable,
//! violation) is [published](Notifier::publish) to each [`Subscription`].
//! A subscription is a bounded event queue plus a real Linux `eventfd`
//! (`EFD_NONBLOCK`) whose counter is incremented once per queued event, so
//! any event loop can wait on it (poll/epoll/io_uring). Two consumers are
//! provided:
//!
//! * [`Subscription::recv`]/[`Subscription::recv_timeout`]: `read(2)` of the
//!   eventfd (after `poll(2)` for the blocking variant), then dequeue as many
//!   events as the counter said;
//! * [`UringConsumer`]: keeps an `IORING_OP_READ` of the eventfd in flight
//!   on an io_uring; each completion carries the counter value (8 bytes),
//!   and the consumer dequeues that many events.
//!
//! Ordering: `publish` queues the event *before* writing the eventfd, so a
//! consumer that read a counter of `n` always finds `n` events queued
//! (minus those dropped on overflow, counted in [`Subscription::dropped`]).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// `arg1` of a [`EventKind::Violation`] event whose access was found after
/// the fact (a blocked page present again), read or write unknown.
pub const VIOLATION_FOUND_AFTER: u64 = 2;

/// What happened.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// AGENT_ACCESS: agent registered, zone created (arg0 = zone GPA,
    /// arg1 = zone pages).
    Access = 1,
    /// VMM_ENTER: a call started (arg0 = call number).
    Enter = 2,
    /// VMM_RESUME: a call ended (arg0 = status the guest reported).
    Resume = 3,
    /// AGENT_FAULT: the agent faulted (arg0 = vector, arg1 = address).
    Fault = 4,
    /// AGENT_DISABLE: agent disabled, zone removed.
    Disable = 5,
    /// AGENT_ENABLE: agent re-enabled with a fresh zone (arg0 = GPA,
    /// arg1 = pages).
    Enable = 6,
    /// The guest touched a blocked zone page (arg0 = GPA, arg1 = 1 if a
    /// write, 0 if a read, [`VIOLATION_FOUND_AFTER`] if the access was found
    /// afterwards and its kind is unknown: the QEMU engine's punched pages).
    Violation = 7,
    /// AGENT_ACCESS with `access::ALIAS`: an agent id registered in another
    /// entry's zone (arg0 = the owner's id).
    Alias = 8,
}

impl EventKind {
    /// Decode.
    pub fn from_u32(v: u32) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::Access,
            2 => EventKind::Enter,
            3 => EventKind::Resume,
            4 => EventKind::Fault,
            5 => EventKind::Disable,
            6 => EventKind::Enable,
            7 => EventKind::Violation,
            8 => EventKind::Alias,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Access => "access",
            EventKind::Enter => "enter",
            EventKind::Resume => "resume",
            EventKind::Fault => "fault",
            EventKind::Disable => "disable",
            EventKind::Enable => "enable",
            EventKind::Violation => "violation",
            EventKind::Alias => "alias",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Global sequence number (assigned by the [`Notifier`], from 1).
    pub seq: u64,
    /// TD the event belongs to.
    pub td: u32,
    /// What happened.
    pub kind: EventKind,
    /// The agent.
    pub agent: u32,
    /// The vCPU that caused it.
    pub vcpu: u32,
    /// Kind-specific (see [`EventKind`]).
    pub arg0: u64,
    /// Kind-specific (see [`EventKind`]).
    pub arg1: u64,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} td {} agent {} vcpu {} {} {:#x} {:#x}",
            self.seq,
            self.td,
            self.agent,
            self.vcpu,
            self.kind.name(),
            self.arg0,
            self.arg1
        )
    }
}

struct SubInner {
    efd: EventFd,
    queue: Mutex<VecDeque<Event>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl SubInner {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A poisoned queue still holds valid events.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, n: u64) -> Vec<Event> {
        let mut q = self.lock();
        let n = (n as usize).min(q.len());
        q.drain(..n).collect()
    }
}

/// Fan-out of events to subscriptions. Cheap to share (`Arc<Notifier>`).
#[derive(Default)]
pub struct Notifier {
    subs: Mutex<Vec<Arc<SubInner>>>,
    seq: AtomicU64,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "subscriptions",
                &self.subs.lock().map(|s| s.len()).unwrap_or(0),
            )
            .field("published", &self.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl Notifier {
    /// A notifier without subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a subscriber whose queue holds at most `capacity` undelivered
    /// events (older ones are dropped and counted beyond that).
    pub fn subscribe(&self, capacity: usize) -> io::Result<Subscription> {
        let inner = Arc::new(SubInner {
            efd: EventFd::new(EFD_NONBLOCK)?,
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        });
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inner.clone());
        Ok(Subscription { inner })
    }

    /// Publish an event (its `seq` is assigned here) to every live
    /// subscription; returns the assigned sequence number. Subscriptions
    /// whose handle was dropped are pruned.
    pub fn publish(&self, mut ev: Event) -> u64 {
        ev.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| Arc::strong_count(s) > 1);
        for s in subs.iter() {
            {
                let mut q = s.lock();
                if q.len() >= s.capacity {
                    q.pop_front();
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
                q.push_back(ev);
            }
            if let Err(e) = s.efd.write(1) {
                // EAGAIN only if the counter would overflow (2^64-2 events
                // unread); the event is queued regardless.
                log::warn!("tetd notify: eventfd write failed: {e}");
            }
        }
        ev.seq
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

/// One consumer's end: an eventfd and a queue.
pub struct Subscription {
    inner: Arc<SubInner>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("fd", &self.inner.efd.as_raw_fd())
            .field("queued", &self.inner.lock().len())
            .finish()
    }
}

impl AsRawFd for Subscription {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.efd.as_raw_fd()
    }
}

impl Subscription {
    /// Read the eventfd without blocking and return the events it counted
    /// (empty if nothing is pending).
    pub fn recv(&self) -> io::Result<Vec<Event>> {
        match self.inner.efd.read() {
            Ok(n) => Ok(self.inner.take(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Wait up to `timeout` for the eventfd to become readable (`poll(2)`),
    /// then [`Self::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Vec<Event>> {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd on our own eventfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        self.recv()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Events queued (some may not yet be counted by a read).
    pub fn queued(&self) -> usize {
        self.inner.lock().len()
    }
}

/// `user_data` of the eventfd READ.
const READ_TAG: u64 = 0x5445_5444_0000_0001;

/// io_uring consumer of a [`Subscription`]: one `IORING_OP_READ` of the
/// eventfd is kept in flight; [`UringConsumer::wait`] submits it if needed,
/// waits for its completion, decodes the 8-byte counter and dequeues that
/// many events.
pub struct UringConsumer {
    ring: IoUring,
    sub: Subscription,
    /// Target of the in-flight read. Boxed so its address is stable while
    /// the kernel may write to it.
    buf: Box<[u8; 8]>,
    in_flight: bool,
}

impl fmt::Debug for UringConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringConsumer")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl UringConsumer {
    /// A ring of `entries` entries consuming `sub`.
    ///
    /// Needs `IORING_FEAT_FAST_POLL` (Linux 5.7: a READ of a non-blocking
    /// eventfd waits for data instead of completing with `EAGAIN`) and
    /// `IORING_FEAT_EXT_ARG` (Linux 5.11: timeouts for
    /// [`Self::wait_timeout`]); an older kernel gets `Unsupported`.
    pub fn new(sub: Subscription, entries: u32) -> io::Result<UringConsumer> {
        let ring = IoUring::new(entries.max(2))?;
        let p = ring.params();
        if !p.is_feature_fast_poll() || !p.is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_FAST_POLL or IORING_FEAT_EXT_ARG (Linux >= 5.11 needed)",
            ));
        }
        Ok(UringConsumer {
            ring,
            sub,
            buf: Box::new([0u8; 8]),
            in_flight: false,
        })
    }

    fn arm(&mut self) -> io::Result<()> {
        if self.in_flight {
            return Ok(());
        }
        let sqe = opcode::Read::new(types::Fd(self.sub.as_raw_fd()), self.buf.as_mut_ptr(), 8)
            .build()
            .user_data(READ_TAG);
        // SAFETY: the buffer is owned by `self` (boxed, stable address) and
        // is not touched again until the completion is reaped; the fd lives
        // as long as `self.sub`. If `self` is dropped with the read in
        // flight, `Drop` waits for it first.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.ring.submit()?;
        self.in_flight = true;
        Ok(())
    }

    /// Reap the completion if there is one; `Some(counter)` on success.
    fn reap(&mut self) -> io::Result<Option<u64>> {
        let Some(cqe) = self.ring.completion().next() else {
            return Ok(None);
        };
        if cqe.user_data() != READ_TAG {
            return Err(io::Error::other("unexpected io_uring completion"));
        }
        self.in_flight = false;
        let res = cqe.result();
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        if res != 8 {
            return Err(io::Error::other(format!("short eventfd read: {res} bytes")));
        }
        Ok(Some(u64::from_ne_bytes(*self.buf)))
    }

    /// Block until at least one event arrives (through the ring) and return
    /// the events the counter covers. Note: the READ is submitted on a
    /// non-blocking eventfd; io_uring parks it on the fd's poll queue and
    /// completes it when the counter becomes non-zero.
    pub fn wait(&mut self) -> io::Result<Vec<Event>> {
        loop {
            self.arm()?;
            self.ring.submit_and_wait(1)?;
            if let Some(n) = self.reap()? {
                return Ok(self.sub.inner.take(n));
            }
        }
    }

    /// Like [`Self::wait`] but give up after `timeout` (returns an empty
    /// vector; the READ stays armed for the next call).
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        self.arm()?;
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        match self.reap()? {
            Some(n) => Ok(self.sub.inner.take(n)),
            None => Ok(Vec::new()),
        }
    }

    /// The subscription being consumed.
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

impl Drop for UringConsumer {
    fn drop(&mut self) {
        if self.in_flight {
            // Make the pending READ complete (so the kernel stops referring
            // to `buf`), then reap it.
            let _ = self.sub.inner.efd.write(1);
            let _ = self.ring.submit_and_wait(1);
            let _ = self.reap();
        }
    }
}
