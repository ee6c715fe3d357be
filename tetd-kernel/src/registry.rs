//! The agent registry: load (parse, verify, lay out, copy, relocate,
//! protect), look up, enable/disable and unload.

use tetd::abi::{Error, Mode, AGENT_FLAG_ADMIN, AGENT_NAME_LEN};
use tetd::image::{Image, MEASUREMENT_LEN};
use tetd::verify::{verify_image, Policy, Signer};

use crate::error::LoadError;
use crate::layout::{Protection, Span, ZoneLayout};
use crate::platform::{AgentEvent, Platform, ZoneMem, ZoneRequest};

/// Most entries one image may add at run time through
/// `Services.register_entry`.
pub const MAX_DYNAMIC_PER_IMAGE: u32 = 16;

/// Handle of a loaded image (never reused while the registry lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u32);

/// How to decide whether an image may be loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Signature policy ([`tetd::verify::Policy`]).
    pub policy: Policy<'a>,
    /// Accept admin agents from images that are not signed by a trusted
    /// key with the `admin` attribute. For development and simulation
    /// only; the guest module never sets it.
    pub allow_untrusted_admin: bool,
}

impl<'a> LoadOptions<'a> {
    /// Options with `policy` and the strict admin rule.
    pub const fn new(policy: Policy<'a>) -> Self {
        LoadOptions {
            policy,
            allow_untrusted_admin: false,
        }
    }
}

/// Counters and last results of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentStats {
    /// Calls that reached the agent.
    pub calls: u64,
    /// Calls that ended with an error (agent status, panic, fault,
    /// timeout) plus calls rejected before running.
    pub failures: u64,
    /// Calls that ended in a fault (incl. stack overflow).
    pub faults: u64,
    /// Calls the watchdog stopped.
    pub timeouts: u64,
    /// Calls rejected before running (disabled, input too large, ...).
    pub rejected: u64,
    /// Status of the last call attempt: `None` = never called, `Some(0)`
    /// = success, else the error code.
    pub last_status: Option<u32>,
    /// The last fault, if any.
    pub last_fault: Option<crate::FaultReport>,
    /// Duration of the last call that ran (ns).
    pub last_ns: u64,
    /// Sum of the durations of all calls that ran (ns).
    pub total_ns: u64,
}

/// One registered agent id.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub(crate) id: u32,
    pub(crate) name: [u8; AGENT_NAME_LEN],
    pub(crate) image: ImageId,
    pub(crate) image_slot: usize,
    pub(crate) mode: Mode,
    pub(crate) flags: u32,
    pub(crate) max_input: u32,
    pub(crate) max_output: u32,
    pub(crate) entry: u64,
    pub(crate) dynamic: bool,
    pub(crate) enabled: bool,
    pub(crate) called: bool,
    pub(crate) stats: AgentStats,
}

impl Agent {
    /// Agent id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Name (as in the manifest or given to `register_entry`).
    pub fn name(&self) -> &str {
        tetd::abi::decode_name(&self.name).unwrap_or("")
    }
    /// Raw name field.
    pub fn name_raw(&self) -> &[u8; AGENT_NAME_LEN] {
        &self.name
    }
    /// The image it belongs to.
    pub fn image(&self) -> ImageId {
        self.image
    }
    /// Default mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// `AGENT_FLAG_*`.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// Admin agent.
    pub fn is_admin(&self) -> bool {
        self.flags & AGENT_FLAG_ADMIN != 0
    }
    /// Max input bytes.
    pub fn max_input(&self) -> u32 {
        self.max_input
    }
    /// Max output bytes.
    pub fn max_output(&self) -> u32 {
        self.max_output
    }
    /// Entry offset from the image base.
    pub fn entry_offset(&self) -> u64 {
        self.entry
    }
    /// Registered at run time through `Services.register_entry`.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }
    /// Enabled (callable).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
    /// Counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }
}

/// One loaded image and its zone.
#[derive(Debug)]
pub struct LoadedImage {
    pub(crate) id: ImageId,
    pub(crate) zone: ZoneMem,
    pub(crate) layout: ZoneLayout,
    pub(crate) measurement: [u8; MEASUREMENT_LEN],
    pub(crate) package: [u8; 32],
    pub(crate) version: [u8; 16],
    pub(crate) signer: Option<Signer>,
    pub(crate) dynamic_count: u32,
}

impl LoadedImage {
    /// Handle.
    pub fn id(&self) -> ImageId {
        self.id
    }
    /// The zone (address the agent sees: `zone().base`).
    pub fn zone(&self) -> &ZoneMem {
        &self.zone
    }
    /// The zone layout.
    pub fn layout(&self) -> &ZoneLayout {
        &self.layout
    }
    /// SHA-384 measurement of the image.
    pub fn measurement(&self) -> &[u8; MEASUREMENT_LEN] {
        &self.measurement
    }
    /// Package name from the manifest.
    pub fn package(&self) -> &str {
        decode_padded(&self.package)
    }
    /// Package version from the manifest.
    pub fn version(&self) -> &str {
        decode_padded(&self.version)
    }
    /// Who signed it (`None`: unsigned, accepted by the policy).
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }
}

fn decode_padded(raw: &[u8]) -> &str {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    core::str::from_utf8(&raw[..end]).unwrap_or("")
}

/// The registry of loaded images and agent ids, over a [`Platform`].
///
/// Fixed capacity (`IMAGES` images, `AGENTS` agent ids in total, including
/// run-time registered ones); allocates nothing itself. `new` is `const`,
/// so a kernel can keep it in a static (it is several tens of KiB: do not
/// put it on a kernel stack).
pub struct Registry<P: Platform, const IMAGES: usize = 16, const AGENTS: usize = 128> {
    pub(crate) platform: P,
    pub(crate) images: [Option<LoadedImage>; IMAGES],
    pub(crate) agents: [Option<Agent>; AGENTS],
    next_image: u32,
}

impl<P: Platform, const IMAGES: usize, const AGENTS: usize> Registry<P, IMAGES, AGENTS> {
    /// An empty registry.
    pub const fn new(platform: P) -> Self {
        Registry {
            platform,
            images: [const { None }; IMAGES],
            agents: [const { None }; AGENTS],
            next_image: 1,
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Parse, verify and load an image; registers its agents.
    pub fn load(&mut self, bytes: &[u8], opts: &LoadOptions<'_>) -> Result<ImageId, LoadError> {
        let img = Image::parse(bytes)?;
        let verified = verify_image(&img, &opts.policy).map_err(LoadError::Verify)?;
        if !opts.allow_untrusted_admin && verified.check_admin_agents(&img).is_err() {
            let id = img.agents().find(|a| a.is_admin()).map_or(0, |a| a.id);
            return Err(LoadError::AdminNotTrusted { id });
        }
        for a in img.agents() {
            if self.find_agent(a.id).is_some() {
                return Err(LoadError::DuplicateAgentId { id: a.id });
            }
        }
        let free_agents = self.agents.iter().filter(|a| a.is_none()).count();
        if free_agents < img.manifest().agent_count as usize {
            return Err(LoadError::TableFull {
                what: "agent",
                capacity: AGENTS,
            });
        }
        let Some(image_slot) = self.images.iter().position(|i| i.is_none()) else {
            return Err(LoadError::TableFull {
                what: "image",
                capacity: IMAGES,
            });
        };
        let layout =
            ZoneLayout::for_image(&img).map_err(|_| LoadError::ZoneTooLarge { size: u64::MAX })?;
        let zone = self
            .platform
            .zone_alloc(&ZoneRequest {
                image: &img,
                layout: &layout,
            })
            .map_err(|error| LoadError::Platform {
                op: "zone allocation",
                error,
            })?;
        if (zone.len as u64) < layout.total()
            || zone.base % tetd::abi::PAGE_SIZE != 0
            || zone.base.checked_add(zone.len as u64).is_none()
            || zone.view.is_null()
        {
            // SAFETY: returned by zone_alloc of this platform, not used after.
            unsafe { self.platform.zone_free(&zone) };
            return Err(LoadError::Platform {
                op: "zone allocation",
                error: Error::Internal,
            });
        }
        if let Err(e) = self.populate(&img, &zone, &layout) {
            self.release_zone(&zone);
            return Err(e);
        }
        let id = ImageId(self.next_image);
        // Register the agents; roll back on a platform veto.
        for (registered, a) in img.agents().enumerate() {
            if let Err(error) = self.platform.agent_event(AgentEvent::Registered {
                id: a.id,
                dynamic: false,
                mode: a.mode,
                flags: a.flags,
            }) {
                for b in img.agents().take(registered) {
                    let _ = self
                        .platform
                        .agent_event(AgentEvent::Unregistered { id: b.id });
                }
                self.agents.iter_mut().for_each(|s| {
                    if s.as_ref().is_some_and(|x| x.image == id) {
                        *s = None;
                    }
                });
                self.release_zone(&zone);
                return Err(LoadError::Platform {
                    op: "agent registration",
                    error,
                });
            }
            let Some(slot) = self.agents.iter_mut().find(|s| s.is_none()) else {
                // Counted above; cannot happen.
                self.release_zone(&zone);
                return Err(LoadError::TableFull {
                    what: "agent",
                    capacity: AGENTS,
                });
            };
            *slot = Some(Agent {
                id: a.id,
                name: a.name,
                image: id,
                image_slot,
                mode: a.mode,
                flags: a.flags,
                max_input: a.max_input,
                max_output: a.max_output,
                entry: a.entry,
                dynamic: false,
                enabled: true,
                called: false,
                stats: AgentStats::default(),
            });
        }
        let m = img.manifest();
        self.images[image_slot] = Some(LoadedImage {
            id,
            zone,
            layout,
            measurement: *img.measurement(),
            package: m.package,
            version: m.version,
            signer: verified.signer,
            dynamic_count: 0,
        });
        self.next_image = self.next_image.wrapping_add(1).max(1);
        Ok(id)
    }

    /// Zero the zone, copy the segments, apply the relocations against
    /// `zone.base`, then set every region's protection.
    fn populate(
        &self,
        img: &Image<'_>,
        zone: &ZoneMem,
        layout: &ZoneLayout,
    ) -> Result<(), LoadError> {
        let total = layout.total() as usize;
        // SAFETY: zone.view is valid and writable for zone.len >= total
        // bytes (Platform contract, length checked by the caller).
        unsafe { core::ptr::write_bytes(zone.view, 0, total) };
        for s in img.segments() {
            let data = img.segment_data(&s);
            // Image::parse checked vaddr + file_size <= vaddr + mem_size <=
            // load_size <= total.
            // SAFETY: destination range inside the zone (see above); the
            // source is the image, which does not overlap zone memory.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    zone.view.add(s.vaddr as usize),
                    data.len(),
                )
            };
        }
        for off in img.relocations() {
            let off = off as u64;
            // Image::parse checked the 8-byte slot lies in the file-backed
            // part of a segment.
            // SAFETY: off + 8 <= load_size <= total: inside the zone.
            let p = unsafe { zone.view.add(off as usize) };
            // SAFETY: p is valid for 8 bytes (see above); unaligned access.
            let addend = u64::from_le(unsafe { core::ptr::read_unaligned(p as *const u64) });
            let value = zone
                .base
                .checked_add(addend)
                .ok_or(LoadError::Relocation { offset: off })?;
            // SAFETY: as above.
            unsafe { core::ptr::write_unaligned(p as *mut u64, value.to_le()) };
        }
        // Protections, merging neighbours with the same protection.
        let mut run: Option<(Span, Protection)> = None;
        let platform = &self.platform;
        let apply = |span: Span, prot: Protection| {
            platform
                .zone_protect(zone, span.offset, span.len, prot)
                .map_err(|error| LoadError::Platform {
                    op: "zone protection",
                    error,
                })
        };
        layout.for_each_region(|r| {
            match run {
                Some((span, prot)) if prot == r.prot && span.end() == r.span.offset => {
                    run = Some((
                        Span {
                            offset: span.offset,
                            len: span.len + r.span.len,
                        },
                        prot,
                    ));
                }
                Some((span, prot)) => {
                    apply(span, prot)?;
                    run = Some((r.span, r.prot));
                }
                None => run = Some((r.span, r.prot)),
            }
            Ok::<(), LoadError>(())
        })?;
        if let Some((span, prot)) = run {
            apply(span, prot)?;
        }
        Ok(())
    }

    /// Free a zone (the platform scrubs it: see [`Platform::zone_free`]).
    fn release_zone(&self, zone: &ZoneMem) {
        // SAFETY: zone came from this platform's zone_alloc; not used after.
        unsafe { self.platform.zone_free(zone) };
    }

    /// Unload an image: unregister all its agents, scrub and free its zone.
    /// Returns how many agent ids were removed.
    pub fn unload(&mut self, image: ImageId) -> Result<usize, Error> {
        let slot = self
            .images
            .iter()
            .position(|i| i.as_ref().is_some_and(|i| i.id == image))
            .ok_or(Error::NotFound)?;
        let mut removed = 0;
        for s in self.agents.iter_mut() {
            if let Some(a) = s {
                if a.image == image {
                    // The image goes away regardless; a platform error here
                    // cannot be acted upon.
                    let _ = self
                        .platform
                        .agent_event(AgentEvent::Unregistered { id: a.id });
                    *s = None;
                    removed += 1;
                }
            }
        }
        if let Some(img) = self.images[slot].take() {
            self.release_zone(&img.zone);
        }
        Ok(removed)
    }

    /// Unload the image holding agent `id`.
    pub fn unload_agent(&mut self, id: u32) -> Result<(ImageId, usize), Error> {
        let image = self.agent(id).ok_or(Error::NotFound)?.image;
        let n = self.unload(image)?;
        Ok((image, n))
    }

    /// Unload everything.
    pub fn unload_all(&mut self) {
        let ids: [Option<ImageId>; IMAGES] =
            core::array::from_fn(|i| self.images[i].as_ref().map(|x| x.id));
        for id in ids.into_iter().flatten() {
            let _ = self.unload(id);
        }
    }

    pub(crate) fn find_agent(&self, id: u32) -> Option<usize> {
        self.agents
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| a.id == id))
    }

    /// The agent with `id`.
    pub fn agent(&self, id: u32) -> Option<&Agent> {
        self.find_agent(id).and_then(|i| self.agents[i].as_ref())
    }

    /// All registered agents, ordered by id.
    pub fn agents(&self) -> impl Iterator<Item = &Agent> + '_ {
        let mut last: Option<u32> = None;
        core::iter::from_fn(move || {
            let next = self
                .agents
                .iter()
                .flatten()
                .filter(|a| last.is_none_or(|l| a.id > l))
                .min_by_key(|a| a.id)?;
            last = Some(next.id);
            Some(next)
        })
    }

    /// Number of registered agent ids.
    pub fn agent_count(&self) -> usize {
        self.agents.iter().flatten().count()
    }

    /// The loaded images, in load order.
    pub fn images(&self) -> impl Iterator<Item = &LoadedImage> + '_ {
        let mut last: Option<ImageId> = None;
        core::iter::from_fn(move || {
            let next = self
                .images
                .iter()
                .flatten()
                .filter(|i| last.is_none_or(|l| i.id > l))
                .min_by_key(|i| i.id)?;
            last = Some(next.id);
            Some(next)
        })
    }

    /// A loaded image.
    pub fn image(&self, id: ImageId) -> Option<&LoadedImage> {
        self.images.iter().flatten().find(|i| i.id == id)
    }

    /// The image holding agent `id`.
    pub fn image_of(&self, id: u32) -> Option<&LoadedImage> {
        let a = self.agent(id)?;
        self.images[a.image_slot].as_ref()
    }

    /// Enable or disable an agent (what the admin `Enable` / `Disable`
    /// operations do). The platform sees an [`AgentEvent`] first and may
    /// veto.
    pub fn set_enabled(&mut self, id: u32, enabled: bool) -> Result<(), Error> {
        let i = self.find_agent(id).ok_or(Error::NotFound)?;
        set_enabled_in(&self.platform, &mut self.agents[..], i, enabled)
    }
}

/// Shared by [`Registry::set_enabled`] and the admin service (which must not
/// form a reference to the whole registry).
pub(crate) fn set_enabled_in<P: Platform>(
    platform: &P,
    agents: &mut [Option<Agent>],
    i: usize,
    enabled: bool,
) -> Result<(), Error> {
    let a = agents[i].as_mut().ok_or(Error::NotFound)?;
    if a.enabled == enabled {
        return Ok(());
    }
    let ev = if enabled {
        AgentEvent::Enabled { id: a.id }
    } else {
        AgentEvent::Disabled { id: a.id }
    };
    platform.agent_event(ev)?;
    a.enabled = enabled;
    Ok(())
}

impl<P: Platform, const IMAGES: usize, const AGENTS: usize> Drop for Registry<P, IMAGES, AGENTS> {
    fn drop(&mut self) {
        self.unload_all();
    }
}
