//! `tetd-pack build` failures: each bad input gets exit status 1 and a
//! message naming the symbol / key / field at fault, never a panic.
//!
//! * fixture crates (tests/fixtures/*) for errors that come from source;
//! * mutated copies of the linked echo ELF (packed with `--elf`) for errors
//!   a well-behaved toolchain does not produce but a hand-linked ELF can.

mod build_util;

use std::path::{Path, PathBuf};

use build_util::*;
use object::elf::{self, FileHeader64, SectionHeader64};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};
use object::LittleEndian as LE;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn build_fixture(name: &str) -> Out {
    let out = scratch().join(format!("{name}.tetd"));
    let o = build(&fixture(name), &out, &["-q"]);
    o.expect_code(1);
    assert!(!out.exists(), "no image is written on failure");
    o
}

#[test]
fn unresolved_symbol_is_named_with_its_user() {
    let o = build_fixture("unresolved");
    assert!(o.stderr.contains("1 unresolved symbol"), "{}", o.stderr);
    assert!(o.stderr.contains("`tetd_missing_helper`"), "{}", o.stderr);
    // The handler is inlined into its entry trampoline (LTO): either name
    // identifies it.
    assert!(
        o.stderr.contains("referenced by fn needs_helper (agent 1)")
            || o.stderr
                .contains("referenced by fixture_unresolved::needs_helper"),
        "{}",
        o.stderr
    );
}

#[test]
fn duplicate_ids_name_both_agents() {
    let o = build_fixture("dup_ids");
    let e = &o.stderr;
    assert!(e.contains("duplicate agent id 7"), "{e}");
    assert!(e.contains("`first` (fn first)"), "{e}");
    assert!(e.contains("`second` (fn second_handler)"), "{e}");
}

#[test]
fn metadata_typo_names_key_and_file() {
    let o = build_fixture("bad_metadata");
    let e = &o.stderr;
    assert!(e.contains("unknown field `stak_size`"), "{e}");
    assert!(
        e.contains(
            &fixture("bad_metadata")
                .join("Cargo.toml")
                .display()
                .to_string()
        ),
        "{e}"
    );
    assert!(e.contains("line 13"), "{e}");
    // Rejected before anything is compiled.
    assert!(!e.contains("Compiling"), "{e}");
}

#[test]
fn crate_without_agents_is_rejected() {
    let o = build_fixture("no_agents");
    assert!(
        o.stderr.contains("no agents in `fixture-no_agents`"),
        "{}",
        o.stderr
    );
}

#[test]
fn missing_agent_feature_gets_a_hint() {
    let o = build_fixture("no_panic_handler");
    let e = &o.stderr;
    assert!(e.contains("panic_handler"), "{e}");
    assert!(e.contains("hint: enable tetd-sdk's `agent` feature"), "{e}");
}

#[test]
fn ifunc_relocation_is_rejected_by_type() {
    let o = build_fixture("ifunc");
    let e = &o.stderr;
    assert!(e.contains("R_X86_64_IRELATIVE at 0x"), "{e}");
    assert!(e.contains("only R_X86_64_RELATIVE"), "{e}");
}

#[test]
fn not_a_crate() {
    let o = tetd_pack(&["build", "/nonexistent/agent"]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("/nonexistent/agent: no Cargo.toml here"),
        "{}",
        o.stderr
    );
    // The workspace root is a virtual manifest, not an agent crate.
    let o = tetd_pack(&["build", "."]);
    o.expect_code(1);
    assert!(
        o.stderr.contains("virtual workspace manifest"),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------
// Mutated ELFs
// ---------------------------------------------------------------------------

/// The linked echo ELF.
fn echo_elf() -> Vec<u8> {
    let (_, json) = example("echo");
    std::fs::read(json["build"]["elf"].as_str().unwrap()).unwrap()
}

/// Pack `elf` (written to a scratch file) with `build --elf`; expect failure.
fn pack_bad(name: &str, elf: &[u8]) -> String {
    let path = scratch().join(format!("{name}.elf"));
    std::fs::write(&path, elf).unwrap();
    let out = scratch().join(format!("{name}.tetd"));
    let o = build(
        &root().join("examples/echo"),
        &out,
        &["-q", "--elf", path.to_str().unwrap()],
    );
    o.expect_code(1);
    assert!(!out.exists());
    o.stderr
}

struct Layout {
    phoff: usize,
    phentsize: usize,
    phdrs: Vec<(u32, u32)>,                              // (p_type, p_flags)
    sections: Vec<(String, usize, SectionHeader64<LE>)>, // name, header offset
}

fn layout(d: &[u8]) -> Layout {
    let h = FileHeader64::<LE>::parse(d).unwrap();
    let e = h.endian().unwrap();
    let phdrs = h
        .program_headers(e, d)
        .unwrap()
        .iter()
        .map(|p| (p.p_type(e).0, p.p_flags(e).0))
        .collect();
    let st = h.sections(e, d).unwrap();
    let shoff = h.e_shoff(e) as usize;
    let shentsize = h.e_shentsize(e) as usize;
    let sections = st
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                String::from_utf8_lossy(st.section_name(e, s).unwrap()).into_owned(),
                shoff + i * shentsize,
                *s,
            )
        })
        .collect();
    Layout {
        phoff: h.e_phoff(e) as usize,
        phentsize: h.e_phentsize(e) as usize,
        phdrs,
        sections,
    }
}

impl Layout {
    fn section(&self, name: &str) -> (usize, usize, u64, usize) {
        let e = LE;
        let (i, (_, hdr_off, s)) = self
            .sections
            .iter()
            .enumerate()
            .find(|(_, (n, _, _))| n == name)
            .unwrap_or_else(|| panic!("no section {name}"));
        (i, *hdr_off, s.sh_addr(e), s.sh_offset(e) as usize)
    }
    /// File offset of program header `i`.
    fn phdr(&self, i: usize) -> usize {
        self.phoff + i * self.phentsize
    }
    fn load_index(&self, flags: u32) -> usize {
        self.phdrs
            .iter()
            .position(|&(t, f)| t == elf::PT_LOAD.0 && f == flags)
            .unwrap_or_else(|| panic!("no PT_LOAD with flags {flags}"))
    }
}

fn put32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(d: &mut [u8], off: usize, v: u64) {
    d[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get64(d: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(d[off..off + 8].try_into().unwrap())
}

#[test]
fn unmodified_elf_packs() {
    // The baseline of the mutations below is fine.
    let elf = echo_elf();
    let path = scratch().join("baseline.elf");
    std::fs::write(&path, &elf).unwrap();
    let out = scratch().join("baseline.tetd");
    build(
        &root().join("examples/echo"),
        &out,
        &["-q", "--elf", path.to_str().unwrap()],
    )
    .expect_code(0);
}

#[test]
fn symbol_relocation_names_symbol_and_type() {
    let mut d = echo_elf();
    let l = layout(&d);
    let e = LE;
    // Point .rela.dyn at .symtab and turn its first entry into R_X86_64_64
    // against the echo trampoline's symbol.
    let (symtab_idx, _, _, _) = l.section(".symtab");
    let h = FileHeader64::<LE>::parse(&*d).unwrap();
    let st = h.sections(e, &*d).unwrap();
    let table = st.symbols(e, &*d, elf::SHT_SYMTAB).unwrap();
    let sym = table
        .iter()
        .position(|s| s.name(e, table.strings()).unwrap() == b"__tetd_entry_1_echo")
        .expect("trampoline symbol");
    let (_, rela_hdr, _, rela_off) = l.section(".rela.dyn");
    put32(&mut d, rela_hdr + 40, symtab_idx as u32); // sh_link
    let info = ((sym as u64) << 32) | elf::R_X86_64_64.0 as u64;
    put64(&mut d, rela_off + 8, info);
    let slot = get64(&d, rela_off);
    let err = pack_bad("symreloc", &d);
    assert!(
        err.contains(&format!(
            "R_X86_64_64 at {slot:#x} against symbol `__tetd_entry_1_echo`"
        )),
        "{err}"
    );
}

#[test]
fn write_execute_segment_is_rejected() {
    let mut d = echo_elf();
    let l = layout(&d);
    let text = l.load_index(elf::PF_R.0 | elf::PF_X.0);
    put32(&mut d, l.phdr(text) + 4, 7);
    let err = pack_bad("wx", &d);
    assert!(err.contains("is both writable and executable"), "{err}");
    assert!(err.contains(".text"), "{err}");
}

#[test]
fn tls_segment_is_rejected() {
    let mut d = echo_elf();
    let l = layout(&d);
    let data = l.load_index(elf::PF_R.0 | elf::PF_W.0);
    put32(&mut d, l.phdr(data), elf::PT_TLS.0);
    let err = pack_bad("tls", &d);
    assert!(err.contains("thread-local storage (PT_TLS"), "{err}");
}

#[test]
fn interpreter_is_rejected() {
    let mut d = echo_elf();
    let l = layout(&d);
    let data = l.load_index(elf::PF_R.0 | elf::PF_W.0);
    put32(&mut d, l.phdr(data), elf::PT_INTERP.0);
    let err = pack_bad("interp", &d);
    assert!(err.contains("PT_INTERP"), "{err}");
}

#[test]
fn needed_library_is_rejected() {
    let mut d = echo_elf();
    let l = layout(&d);
    let (_, _, _, dyn_off) = l.section(".dynamic");
    // First entry -> DT_NEEDED, name at dynstr offset 0 ("").
    put64(&mut d, dyn_off, elf::DT_NEEDED.0 as u64);
    put64(&mut d, dyn_off + 8, 0);
    let err = pack_bad("needed", &d);
    assert!(err.contains("DT_NEEDED"), "{err}");
}

#[test]
fn not_a_pie_is_rejected() {
    let mut d = echo_elf();
    d[16..18].copy_from_slice(&elf::ET_EXEC.0.to_le_bytes());
    let err = pack_bad("exec", &d);
    assert!(
        err.contains("not a position-independent executable"),
        "{err}"
    );
}

#[test]
fn garbage_is_rejected() {
    let err = pack_bad("garbage", b"\x7fELF this is not an ELF file at all");
    assert!(err.contains("malformed ELF"), "{err}");
    let d = echo_elf();
    let err = pack_bad("truncated", &d[..d.len() / 3]);
    assert!(err.contains("malformed ELF"), "{err}");
}

fn descriptor_offset(d: &[u8]) -> usize {
    layout(d).section(".tetd.agents").3
}

#[test]
fn bad_descriptor_magic_is_rejected() {
    let mut d = echo_elf();
    let off = descriptor_offset(&d);
    put32(&mut d, off, 0x1234_5678);
    let err = pack_bad("magic", &d);
    assert!(
        err.contains("__tetd_agent_1_echo: bad descriptor magic 0x12345678"),
        "{err}"
    );
}

#[test]
fn descriptor_abi_mismatch_is_rejected() {
    let mut d = echo_elf();
    let off = descriptor_offset(&d);
    put32(&mut d, off + 4, 99);
    let err = pack_bad("abi", &d);
    assert!(err.contains("agent ABI version 99"), "{err}");
}

#[test]
fn descriptor_section_size_is_checked() {
    let mut d = echo_elf();
    let l = layout(&d);
    let (_, hdr, _, _) = l.section(".tetd.agents");
    put64(&mut d, hdr + 32, 71); // sh_size
    let err = pack_bad("descsize", &d);
    assert!(
        err.contains("not a multiple of the 72-byte descriptor"),
        "{err}"
    );
}

#[test]
fn entry_without_relocation_is_rejected() {
    let mut d = echo_elf();
    let l = layout(&d);
    let (_, _, desc_addr, _) = l.section(".tetd.agents");
    let (_, _, _, rela_off) = l.section(".rela.dyn");
    let count = l
        .sections
        .iter()
        .find(|(n, _, _)| n == ".rela.dyn")
        .map(|(_, _, s)| s.sh_size(LE) as usize / 24)
        .unwrap();
    let slot = desc_addr + 64;
    let i = (0..count)
        .find(|i| get64(&d, rela_off + i * 24) == slot)
        .expect("relocation of the entry slot");
    put64(&mut d, rela_off + i * 24 + 8, elf::R_X86_64_NONE.0 as u64);
    let err = pack_bad("noentryreloc", &d);
    assert!(
        err.contains(&format!(
            "the entry pointer at {slot:#x} has no R_X86_64_RELATIVE relocation"
        )),
        "{err}"
    );
}

#[test]
fn missing_descriptor_section_is_rejected() {
    let mut d = echo_elf();
    // Rename the section in .shstrtab to another (known, same-length) name.
    let pos = d
        .windows(13)
        .position(|w| w == b".tetd.agents\0")
        .expect("section name");
    d[pos..pos + 12].copy_from_slice(b".data.rel.ro");
    let err = pack_bad("nodesc", &d);
    assert!(
        err.contains("no agents: the ELF has no .tetd.agents section"),
        "{err}"
    );
}

#[test]
fn corrupted_elfs_never_crash_the_packer() {
    // Flip bytes in the parts of the ELF the packer interprets (headers,
    // program and section headers, relocations, dynamic table, descriptors):
    // every run must end with exit status 0 or 1, never a panic or a signal.
    let orig = echo_elf();
    let l = layout(&orig);
    let h = FileHeader64::<LE>::parse(&*orig).unwrap();
    let e = LE;
    let shoff = h.e_shoff(e) as usize;
    let shsize = h.e_shnum(e) as usize * h.e_shentsize(e) as usize;
    let mut regions = vec![
        (0usize, 64usize),
        (l.phoff, l.phdrs.len() * l.phentsize),
        (shoff, shsize),
    ];
    for name in [".rela.dyn", ".dynamic", ".tetd.agents"] {
        let (_, _, _, off) = l.section(name);
        let size = l
            .sections
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, s)| s.sh_size(e) as usize)
            .unwrap();
        regions.push((off, size));
    }
    // A fixed-seed xorshift: the same mutations on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases = Vec::new();
    for _ in 0..40 {
        let mut d = orig.clone();
        for _ in 0..1 + next() % 3 {
            let (off, len) = regions[(next() % regions.len() as u64) as usize];
            let at = off + (next() % len.max(1) as u64) as usize;
            let v = next();
            // Mostly bit flips; sometimes 0 / 0xff (lengths, counts, types).
            d[at] = match v % 4 {
                0 => 0,
                1 => 0xff,
                _ => d[at] ^ (1 << ((v >> 8) % 8)),
            };
        }
        cases.push(d);
    }
    std::thread::scope(|s| {
        for chunk in cases.chunks(cases.len().div_ceil(4)).enumerate() {
            s.spawn(move || {
                let (c, chunk) = chunk;
                for (i, d) in chunk.iter().enumerate() {
                    let path = scratch().join(format!("fuzz-{c}-{i}.elf"));
                    std::fs::write(&path, d).unwrap();
                    let out = scratch().join(format!("fuzz-{c}-{i}.tetd"));
                    let o = build(
                        &root().join("examples/echo"),
                        &out,
                        &["-q", "--elf", path.to_str().unwrap()],
                    );
                    assert!(
                        o.code == 0 || o.code == 1,
                        "mutation {c}-{i}: exit {} (crash?)\n{}",
                        o.code,
                        o.stderr
                    );
                    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
                    if o.code == 0 {
                        // Whatever was packed passes the image checks.
                        let img = std::fs::read(&out).unwrap();
                        tetd::image::Image::parse(&img).unwrap();
                    }
                }
            });
        }
    });
}
