//! Section `sim`: the loader core on the host simulator
//! (`tetd_kernel::sim`): image load per MiB, agent call round trips,
//! encrypted against plain calls.

use std::time::Instant;

use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha384};
use tetd::abi::Mode;
use tetd::abi::PAGE_SIZE;
use tetd::image::{with_signature, Image, ImageBuilder, SegmentSpec, SignatureBlock, PERM_R};
use tetd::verify::Policy;
use tetd_kernel::sim::{LogTarget, SimPlatform};
use tetd_kernel::{CallOptions, LoadOptions, Registry};

use super::report::Unit;
use super::stats::{sample_ns, Summary};
use super::{BenchConfig, Images, Report, SectionError, SectionResult};
use crate::session::Session;

const SECTION: &str = "sim";
const MIB: usize = 1 << 20;
/// One pointer slot (a relocation) every this many bytes of the table.
const SLOT_STRIDE: usize = 64;

/// `echo_image` plus a read-only table of `mib` MiB with a pointer (a
/// relocation against the zone base) every 64 bytes: a large image whose
/// load exercises every step (parse and measure all bytes, copy, relocate,
/// protect). Unsigned.
pub fn big_image(echo_image: &[u8], mib: usize) -> SectionResult<Vec<u8>> {
    let bad = |e: &dyn std::fmt::Display| SectionError::Fail(format!("big image: {e}"));
    let img = Image::parse(echo_image).map_err(|e| bad(&e))?;
    let mut segments: Vec<SegmentSpec> = img
        .segments()
        .map(|s| SegmentSpec {
            vaddr: s.vaddr,
            mem_size: s.mem_size,
            perms: s.perms,
            data: img.segment_data(&s).to_vec(),
        })
        .collect();
    let mut relocations: Vec<u32> = img.relocations().collect();
    let load_size = img.header().load_size;
    let base = load_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let len = mib * MIB;
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_exact_mut(SLOT_STRIDE).enumerate() {
        // slot: base-relative address of the next chunk (wrapping to the
        // table start); the rest: a pattern (not compressible to zero pages)
        let target = base + (((i + 1) * SLOT_STRIDE) % len) as u64;
        chunk[..8].copy_from_slice(&target.to_le_bytes());
        for (j, b) in chunk[8..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(j as u8);
        }
        let off = u32::try_from(base as usize + i * SLOT_STRIDE).map_err(|e| bad(&e))?;
        relocations.push(off);
    }
    relocations.sort_unstable();
    segments.push(SegmentSpec {
        vaddr: base,
        mem_size: len as u64,
        perms: PERM_R,
        data,
    });
    let b = ImageBuilder {
        manifest: *img.manifest(),
        agents: img.agents().collect(),
        segments,
        relocations,
        load_size: base + len as u64,
    };
    b.build().map_err(|e| bad(&e))
}

/// Sign `image` with a fresh Ed25519 key (ring), as `tetd-pack sign` does.
pub fn sign_fresh(image: &[u8]) -> SectionResult<Vec<u8>> {
    let fail = |e: &dyn std::fmt::Display| SectionError::Fail(format!("signing: {e}"));
    let rng = ring::rand::SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| fail(&e))?;
    let kp = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).map_err(|e| fail(&e))?;
    let img = Image::parse(image).map_err(|e| fail(&e))?;
    let msg: Vec<u8> = img.signed_message_parts().concat();
    let sig = kp.sign(&msg);
    let pk: [u8; 32] = kp.public_key().as_ref().try_into().map_err(|e| fail(&e))?;
    let sig: [u8; 64] = sig.as_ref().try_into().map_err(|e| fail(&e))?;
    with_signature(image, &SignatureBlock::new(pk, sig)).map_err(|e| fail(&e))
}

fn registry() -> Box<Registry<SimPlatform>> {
    Box::new(Registry::new(SimPlatform::new(LogTarget::Capture)))
}

fn summary(v: &[f64]) -> SectionResult<Summary> {
    Summary::of(v).ok_or_else(|| SectionError::Fail("no samples".into()))
}

fn getppid() {
    // SAFETY: a syscall without arguments or side effects.
    std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
}

/// The section.
pub fn run(cfg: &BenchConfig, images: &Images, rep: &mut Report) -> SectionResult<()> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| SectionError::Fail(format!("{}: {e}", p.display())))
    };
    let echo = read(&images.echo)?;
    let secure = read(&images.secure_echo)?;
    load_per_mib(cfg, &echo, rep)?;
    calls(cfg, &echo, rep)?;
    encrypted(cfg, &echo, &secure, rep)
}

fn load_per_mib(cfg: &BenchConfig, echo: &[u8], rep: &mut Report) -> SectionResult<()> {
    let mib = if cfg.quick { 1 } else { 32 };
    let big = sign_fresh(&big_image(echo, mib)?)?;
    let size_mib = big.len() as f64 / MIB as f64;
    let rounds = cfg.iters(9, 2);
    let opts = LoadOptions::new(Policy::self_consistent());
    let mut reg = registry();
    let (mut load, mut hash) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let id = reg
            .load(&big, &opts)
            .map_err(|e| SectionError::Fail(format!("loading the big image: {e}")))?;
        load.push(t.elapsed().as_nanos() as f64 / size_mib);
        reg.unload(id)
            .map_err(|e| SectionError::Fail(format!("unload: {e}")))?;
        let t = Instant::now();
        std::hint::black_box(Sha384::digest(std::hint::black_box(&big[..])));
        hash.push(t.elapsed().as_nanos() as f64 / size_mib);
    }
    rep.add(
        "sim.load.per_mib",
        SECTION,
        "image load: parse + verify + relocate + map",
        Unit::NsPerMiB,
        summary(&load)?,
        Some(("SHA-384 of the same bytes", summary(&hash)?)),
        &format!(
            "{size_mib:.1} MiB signed image, a relocation every {SLOT_STRIDE} bytes; unload not timed"
        ),
    );
    Ok(())
}

fn calls(cfg: &BenchConfig, echo: &[u8], rep: &mut Report) -> SectionResult<()> {
    let mut reg = registry();
    let opts = LoadOptions::new(Policy::allow_unsigned(
        tetd::verify::AllowList::parse("").map_err(SectionError::fail)?,
    ));
    reg.load(echo, &opts)
        .map_err(|e| SectionError::Fail(format!("echo.tetd: {e}")))?;
    let n = cfg.iters(20_000, 200);
    let baseline = summary(&sample_ns(n, getppid))?;
    let mut out = vec![0u8; 65536];
    for (label, size) in [("empty", 0usize), ("4k", 4096)] {
        let input = vec![0x5au8; size];
        let copts = CallOptions::default();
        // warm-up (first call flags, page faults)
        for _ in 0..10 {
            let r = reg.call(1, &input, &mut out, &copts);
            r.status
                .map_err(|e| SectionError::Fail(format!("echo call: {e}")))?;
        }
        let s = sample_ns(n, || {
            std::hint::black_box(reg.call(1, &input, &mut out, &copts));
        });
        rep.add(
            &format!("sim.call.{label}"),
            SECTION,
            &format!(
                "agent call round trip, {} input",
                if size == 0 { "empty" } else { "4 KiB" }
            ),
            Unit::Ns,
            summary(&s)?,
            Some(("one bare syscall (getppid)", baseline)),
            "echo, simulator: in-process, no exit; no watchdog (timeout 0)",
        );
    }
    Ok(())
}

fn encrypted(cfg: &BenchConfig, echo: &[u8], secure: &[u8], rep: &mut Report) -> SectionResult<()> {
    let mut reg = registry();
    let opts = LoadOptions::new(Policy::allow_unsigned(
        tetd::verify::AllowList::parse("").map_err(SectionError::fail)?,
    ));
    reg.load(echo, &opts)
        .map_err(|e| SectionError::Fail(format!("echo.tetd: {e}")))?;
    reg.load(secure, &opts)
        .map_err(|e| SectionError::Fail(format!("secure-echo.tetd: {e}")))?;
    let m = *Image::parse(secure)
        .map_err(SectionError::fail)?
        .measurement();
    // Both agents in the same mode (secure-echo's default is collaborative,
    // echo's exclusive; the simulator runs both the same way).
    let copts = CallOptions {
        mode: Some(Mode::Collaborative),
        ..CallOptions::default()
    };
    let mut out = vec![0u8; 65536 + 64];
    let (hs, hello) = Session::hello(m, 20).map_err(SectionError::fail)?;
    let r = reg.call(20, &hello, &mut out, &copts);
    r.status
        .map_err(|e| SectionError::Fail(format!("secure-echo HELLO: {e}")))?;
    let mut session = hs
        .finish(&out[..r.output_len])
        .map_err(|e| SectionError::Fail(format!("secure-echo handshake: {e}")))?;
    for (label, size, full, quick) in [
        ("64", 64usize, 2000usize, 20usize),
        ("4k", 4096, 1000, 10),
        ("64k", 65536, 60, 3),
    ] {
        let n = cfg.iters(full, quick);
        let input = vec![0xa5u8; size];
        let mut plain = Vec::with_capacity(n);
        let mut enc = Vec::with_capacity(n);
        let mut err = None;
        for i in 0..n + 2 {
            let t = Instant::now();
            let r = reg.call(1, &input, &mut out, &copts);
            let tp = t.elapsed().as_nanos() as f64;
            if r.status.is_err() || r.output_len != size {
                err = Some(format!("echo {size} B: {:?}", r.status));
                break;
            }
            let t = Instant::now();
            let res = session.seal(&input).and_then(|msg| {
                let r = reg.call(20, &msg, &mut out, &copts);
                session.open(&out[..r.output_len])
            });
            let te = t.elapsed().as_nanos() as f64;
            match res {
                Ok(o) if o == input => {}
                Ok(o) => {
                    err = Some(format!("secure-echo {size} B: {} bytes back", o.len()));
                    break;
                }
                Err(e) => {
                    err = Some(format!("secure-echo {size} B: {e}"));
                    break;
                }
            }
            if i >= 2 {
                plain.push(tp);
                enc.push(te);
            }
        }
        if let Some(e) = err {
            return Err(SectionError::Fail(e));
        }
        rep.add(
            &format!("sim.encrypted.{label}"),
            SECTION,
            &format!(
                "encrypted call, {} plaintext (seal + call + open)",
                match size {
                    64 => "64 B",
                    4096 => "4 KiB",
                    _ => "64 KiB",
                }
            ),
            Unit::Ns,
            summary(&enc)?,
            Some(("the same call to plain echo", summary(&plain)?)),
            "secure-echo: AES-256-GCM in the agent (portable AES, no AES-NI), ring on the client",
        );
    }
    Ok(())
}
