//! Step 3 of `build`: convert the linked ELF PIE into a `.tetd` image.
//!
//! * every `PT_LOAD` becomes one page-aligned segment with its permissions
//!   (W+X is rejected);
//! * the dynamic relocations must all be `R_X86_64_RELATIVE`; their addends
//!   are written into the slots and the slot offsets form the image's
//!   relocation table. Any other type is an error naming the symbol;
//! * `PT_TLS`, `PT_INTERP`, `DT_NEEDED`, text relocations and initializers
//!   are rejected;
//! * the `.tetd.agents` descriptors (entry pointers resolved through their
//!   RELATIVE relocations) become the manifest's agent records.
//!
//! [`convert`] is a pure function of the ELF bytes and the package
//! information, tested on its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use object::elf::{self, FileHeader64, NAMES_R_X86_64};
use object::read::elf::{Dyn, FileHeader, ProgramHeader, Rela, SectionHeader, SectionTable, Sym};
use object::{LittleEndian as LE, SectionIndex};
use tetd::abi::{
    self, Mode, ABI_VERSION, AGENT_FLAGS_ALL, AGENT_NAME_LEN, DESCRIPTOR_ENTRY_OFFSET,
    DESCRIPTOR_MAGIC, DESCRIPTOR_SECTION, DESCRIPTOR_SIZE, MODE_FROM_MANIFEST, PAGE_SIZE,
};
use tetd::image::{
    encode_padded, AgentRecord, ImageBuilder, ManifestHeader, SegmentSpec, MAX_AGENTS, MAX_IO,
    MAX_LOAD_SIZE, MAX_SEGMENTS, PERM_R, PERM_W, PERM_X,
};

use super::metadata::Settings;

/// What a conversion needs besides the ELF.
#[derive(Debug, Clone)]
pub struct Package<'a> {
    /// Package name (manifest `package`, at most 32 bytes).
    pub name: &'a str,
    /// Package version (manifest `version`, at most 16 bytes).
    pub version: &'a str,
    /// Settings from `[package.metadata.tetd]`.
    pub settings: Settings,
}

/// One agent found in the ELF, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct FoundAgent {
    /// The manifest record.
    pub record: AgentRecord,
    /// The descriptor's symbol (`__tetd_agent_<id>_<fn>`), if known.
    pub symbol: Option<String>,
}

impl FoundAgent {
    /// "`echo` (fn echo)" style description.
    pub fn describe(&self) -> String {
        let f = self
            .symbol
            .as_deref()
            .and_then(|s| fn_name_of_symbol(s, self.record.id));
        match f {
            Some(f) => format!("`{}` (fn {f})", self.record.name()),
            None => format!("`{}`", self.record.name()),
        }
    }
}

/// The handler function name encoded in a descriptor symbol.
fn fn_name_of_symbol(sym: &str, id: u32) -> Option<&str> {
    sym.strip_prefix(super::link::DESCRIPTOR_SYMBOL_PREFIX)?
        .strip_prefix(&format!("{id}_"))
}

/// The result of a conversion.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Ready to [`ImageBuilder::build`].
    pub builder: ImageBuilder,
    /// The agents, sorted by id.
    pub agents: Vec<FoundAgent>,
}

/// Why the ELF cannot become an image. The message names the section,
/// symbol or field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError(pub String);

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConvertError {}

type Result<T> = std::result::Result<T, ConvertError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ConvertError(msg.into()))
}

fn obj_err(what: &str) -> impl FnOnce(object::read::Error) -> ConvertError + '_ {
    move |e| ConvertError(format!("malformed ELF: {what}: {e}"))
}

fn align_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

fn align_up(v: u64) -> Option<u64> {
    Some(v.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// `R_X86_64_*` name of a relocation type.
pub fn reloc_type_name(t: u32) -> String {
    NAMES_R_X86_64
        .name(elf::RelocationType(t))
        .map(str::to_string)
        .unwrap_or_else(|| format!("relocation type {t}"))
}

fn demangle(s: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(s))
}

/// A loadable segment being assembled.
struct Seg {
    vaddr: u64,
    mem_size: u64,
    perms: u32,
    data: Vec<u8>,
}

impl Seg {
    fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.vaddr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.vaddr + self.mem_size)
    }
    fn file_backed(&self, addr: u64, len: u64) -> bool {
        addr >= self.vaddr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.vaddr + self.data.len() as u64)
    }
}

fn perms_str(p: u32) -> String {
    format!(
        "{}{}{}",
        if p & PERM_R != 0 { 'r' } else { '-' },
        if p & PERM_W != 0 { 'w' } else { '-' },
        if p & PERM_X != 0 { 'x' } else { '-' }
    )
}

/// Sections that hold addresses and so live in the read-only-after-relocation
/// segment although the toolchain marks them writable.
const RELRO_SECTIONS: &[&str] = &[
    ".data.rel.ro",
    DESCRIPTOR_SECTION,
    ".dynamic",
    ".got",
    ".got.plt",
];

/// Convert a linked agent ELF into an image description.
pub fn convert(data: &[u8], pkg: &Package<'_>) -> Result<Converted> {
    let hdr = FileHeader64::<LE>::parse(data).map_err(obj_err("ELF header"))?;
    let e = hdr.endian().map_err(obj_err("ELF header"))?;
    if hdr.e_machine(e) != elf::EM_X86_64 {
        return err(format!(
            "the ELF is for machine {:#x}, not x86-64 (EM_X86_64)",
            hdr.e_machine(e)
        ));
    }
    if hdr.e_type(e) != elf::ET_DYN {
        return err(format!(
            "the ELF is of type {:#x}, not a position-independent executable (ET_DYN): \
             it was not linked with -pie",
            hdr.e_type(e)
        ));
    }
    let phdrs = hdr
        .program_headers(e, data)
        .map_err(obj_err("program headers"))?;
    let sections = hdr.sections(e, data).map_err(obj_err("section headers"))?;
    let sec_name = |s: &elf::SectionHeader64<LE>| -> String {
        String::from_utf8_lossy(sections.section_name(e, s).unwrap_or(b"?")).into_owned()
    };

    // --- program headers ---------------------------------------------------
    let mut segs: Vec<Seg> = Vec::new();
    for (i, ph) in phdrs.iter().enumerate() {
        let p_type = ph.p_type(e);
        match p_type {
            elf::PT_LOAD => {}
            elf::PT_TLS => return err(
                "the agent uses thread-local storage (PT_TLS segment): agents run without TLS; \
                     use statics or the heap of `tetd::Call`",
            ),
            elf::PT_INTERP => {
                let interp = ph
                    .data(e, data)
                    .ok()
                    .map(|d| {
                        String::from_utf8_lossy(d)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                return err(format!(
                    "the ELF asks for a program interpreter ({interp:?}, PT_INTERP): \
                     agents are static; link with --no-dynamic-linker"
                ));
            }
            _ => continue,
        }
        let vaddr = ph.p_vaddr(e);
        let memsz = ph.p_memsz(e);
        let filesz = ph.p_filesz(e);
        let flags = ph.p_flags(e).0;
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return err(format!(
                "PT_LOAD #{i} at {vaddr:#x}: p_filesz {filesz:#x} larger than p_memsz {memsz:#x}"
            ));
        }
        let w = flags & elf::PF_W.0 != 0;
        let x = flags & elf::PF_X.0 != 0;
        if w && x {
            let names = section_names_in(&sections, e, vaddr, memsz, &sec_name);
            return err(format!(
                "PT_LOAD #{i} at {vaddr:#x} is both writable and executable (sections: {names}); \
                 TETD never maps W+X memory"
            ));
        }
        let start = align_down(vaddr);
        let end = vaddr
            .checked_add(memsz)
            .and_then(align_up)
            .ok_or_else(|| ConvertError(format!("PT_LOAD #{i}: size overflows")))?;
        let bytes = ph
            .data(e, data)
            .map_err(|_| ConvertError(format!("PT_LOAD #{i}: file range outside the ELF")))?;
        let mut d = vec![0u8; (vaddr - start) as usize];
        d.extend_from_slice(bytes);
        let perms = PERM_R | if w { PERM_W } else { 0 } | if x { PERM_X } else { 0 };
        segs.push(Seg {
            vaddr: start,
            mem_size: end - start,
            perms,
            data: d,
        });
    }
    segs.sort_by_key(|s| s.vaddr);
    for pair in segs.windows(2) {
        if pair[1].vaddr < pair[0].vaddr + pair[0].mem_size {
            return err(format!(
                "loadable segments at {:#x} ({}) and {:#x} ({}) share a page: their permissions \
                 cannot be separated (was the ELF linked with tetd-pack's linker script?)",
                pair[0].vaddr,
                perms_str(pair[0].perms),
                pair[1].vaddr,
                perms_str(pair[1].perms)
            ));
        }
    }
    if segs.is_empty() {
        return err("the ELF has no loadable segment");
    }
    if segs.len() > MAX_SEGMENTS as usize {
        return err(format!(
            "{} loadable segments; an image holds at most {MAX_SEGMENTS}",
            segs.len()
        ));
    }
    let load_size = segs.last().map(|s| s.vaddr + s.mem_size).unwrap_or(0);
    if load_size > MAX_LOAD_SIZE {
        return err(format!(
            "the agent needs {load_size:#x} bytes of address space; an image may use at most {MAX_LOAD_SIZE:#x} (64 MiB)"
        ));
    }

    // --- sections: placement sanity ----------------------------------------
    for s in sections.iter() {
        let flags = s.sh_flags(e).0;
        if flags & elf::SHF_ALLOC.0 == 0 || s.sh_size(e) == 0 {
            continue;
        }
        let name = sec_name(s);
        if flags & elf::SHF_TLS.0 != 0 {
            return err(format!(
                "section {name} is thread-local storage: agents run without TLS"
            ));
        }
        let (addr, size) = (s.sh_addr(e), s.sh_size(e));
        let Some(seg) = segs.iter().find(|g| g.contains(addr, size)) else {
            return err(format!(
                "section {name} ({addr:#x}, {size:#x} bytes) is not inside any loadable segment"
            ));
        };
        if flags & elf::SHF_EXECINSTR.0 != 0 && seg.perms & PERM_X == 0 {
            return err(format!(
                "section {name} holds code but lies in a {} segment",
                perms_str(seg.perms)
            ));
        }
        if flags & elf::SHF_WRITE.0 != 0
            && seg.perms & PERM_W == 0
            && !RELRO_SECTIONS.iter().any(|r| name == *r)
        {
            return err(format!(
                "section {name} is writable but lies in a read-only ({}) segment: \
                 tetd-pack's linker script does not know this section",
                perms_str(seg.perms)
            ));
        }
    }

    // --- dynamic section -----------------------------------------------------
    for s in sections.iter() {
        let Some((dyns, strtab_idx)) = s.dynamic(e, data).map_err(obj_err(".dynamic"))? else {
            continue;
        };
        let strings = sections.strings(e, data, strtab_idx).ok();
        let mut needed = Vec::new();
        for d in dyns {
            let tag = d.d_tag(e);
            let val = d.d_val(e);
            match tag {
                elf::DT_NEEDED => {
                    let name = strings
                        .as_ref()
                        .and_then(|st| st.get(val as u32).ok())
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_else(|| format!("string #{val}"));
                    needed.push(name);
                }
                elf::DT_TEXTREL => {
                    return err("the ELF has text relocations (DT_TEXTREL): code must be position independent")
                }
                elf::DT_FLAGS if val & elf::DF_TEXTREL.0 != 0 => {
                    return err("the ELF has text relocations (DF_TEXTREL): code must be position independent")
                }
                elf::DT_INIT | elf::DT_FINI => {
                    return err("the ELF has initializer/finalizer functions (DT_INIT/DT_FINI): agents run no constructors")
                }
                elf::DT_INIT_ARRAYSZ | elf::DT_FINI_ARRAYSZ | elf::DT_PREINIT_ARRAYSZ if val != 0 => {
                    return err("the ELF has constructors/destructors (.init_array/.fini_array): agents run no constructors")
                }
                elf::DT_RELR | elf::DT_RELRSZ | elf::DT_ANDROID_RELA | elf::DT_ANDROID_REL => {
                    return err("the ELF uses packed relocations (DT_RELR / Android packing): link with --pack-dyn-relocs=none")
                }
                elf::DT_NULL => break,
                _ => {}
            }
        }
        if !needed.is_empty() {
            return err(format!(
                "the ELF needs shared libraries (DT_NEEDED: {}): agents link nothing dynamically",
                needed.join(", ")
            ));
        }
    }

    // --- dynamic relocations -------------------------------------------------
    // slot vaddr -> addend (target offset from the image base)
    let mut relocs: BTreeMap<u64, u64> = BTreeMap::new();
    let mut bad: Vec<String> = Vec::new();
    for s in sections.iter() {
        let flags = s.sh_flags(e).0;
        if flags & elf::SHF_ALLOC.0 == 0 {
            continue; // static relocations (-q), never loaded
        }
        let name = sec_name(s);
        match s.sh_type(e) {
            elf::SHT_REL => {
                return err(format!(
                    "section {name}: REL-format relocations are not used on x86-64; expected RELA"
                ))
            }
            elf::SHT_RELR => {
                return err(format!(
                    "section {name}: packed relative relocations (RELR); link with --pack-dyn-relocs=none"
                ))
            }
            elf::SHT_CREL => {
                return err(format!(
                    "section {name}: compact relocations (CREL) are not supported"
                ))
            }
            _ => {}
        }
        let Some((relas, symtab_idx)) = s.rela(e, data).map_err(obj_err("relocations"))? else {
            continue;
        };
        for r in relas {
            let off = r.r_offset(e);
            let ty = r.r_type(e, false).0;
            let sym = r.r_sym(e, false);
            let addend = r.r_addend(e) as u64;
            if ty == elf::R_X86_64_NONE.0 {
                continue;
            }
            if ty != elf::R_X86_64_RELATIVE.0 || sym != 0 {
                let what = if sym != 0 {
                    format!(
                        "against symbol `{}`",
                        symbol_name(&sections, e, data, symtab_idx, sym)
                    )
                } else if ty == elf::R_X86_64_IRELATIVE.0 {
                    format!(
                        "(no symbol: a GNU indirect function, resolver at {addend:#x};                          agents cannot run ifunc resolvers at load time)"
                    )
                } else {
                    "(no symbol)".to_string()
                };
                bad.push(format!("  {} at {off:#x} {what}", reloc_type_name(ty)));
                continue;
            }
            let Some(seg) = segs.iter_mut().find(|g| g.contains(off, 8)) else {
                return err(format!(
                    "relocation R_X86_64_RELATIVE at {off:#x} patches memory outside every loadable segment"
                ));
            };
            if seg.perms & PERM_X != 0 {
                return err(format!(
                    "relocation R_X86_64_RELATIVE at {off:#x} patches executable memory (text relocation)"
                ));
            }
            if !seg.file_backed(off, 8) {
                // A slot in zero-fill memory: extend the file-backed part.
                let need = (off + 8 - seg.vaddr) as usize;
                seg.data.resize(need, 0);
            }
            if addend > load_size {
                return err(format!(
                    "relocation R_X86_64_RELATIVE at {off:#x} points at {addend:#x}, outside the image ({load_size:#x} bytes)"
                ));
            }
            let at = (off - seg.vaddr) as usize;
            seg.data[at..at + 8].copy_from_slice(&addend.to_le_bytes());
            if relocs.insert(off, addend).is_some() {
                return err(format!("two relocations patch the same slot at {off:#x}"));
            }
        }
    }
    if !bad.is_empty() {
        return err(format!(
            "the ELF has {} relocation{} that a TETD image cannot express (only R_X86_64_RELATIVE, \
             i.e. \"add the load base\", is supported; a symbol relocation means the symbol is \
             undefined, weak or preemptible):\n{}",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" },
            bad.join("\n")
        ));
    }
    let mut prev: Option<u64> = None;
    for &off in relocs.keys() {
        if let Some(p) = prev {
            if off < p + 8 {
                return err(format!("relocations at {p:#x} and {off:#x} overlap"));
            }
        }
        if off > u32::MAX as u64 {
            return err(format!(
                "relocation at {off:#x} beyond the 4 GiB the image format addresses"
            ));
        }
        prev = Some(off);
    }

    // --- agent descriptors ---------------------------------------------------
    let agents = read_descriptors(&sections, e, data, &segs, &relocs, pkg)?;

    let manifest = ManifestHeader {
        agent_count: agents.len() as u32,
        flags: 0,
        stack_size: pkg.settings.stack_size,
        heap_size: pkg.settings.heap_size,
        max_input: pkg.settings.max_input,
        max_output: pkg.settings.max_output,
        mode: pkg.settings.mode,
        required_services: 0,
        package: encode_padded::<32>(pkg.name).ok_or_else(|| {
            ConvertError(format!(
                "package name `{}` does not fit the manifest's 32-byte `package` field",
                pkg.name
            ))
        })?,
        version: encode_padded::<16>(pkg.version).ok_or_else(|| {
            ConvertError(format!(
                "package version `{}` does not fit the manifest's 16-byte `version` field",
                pkg.version
            ))
        })?,
    };
    let builder = ImageBuilder {
        manifest,
        agents: agents.iter().map(|a| a.record).collect(),
        segments: segs
            .into_iter()
            .map(|s| SegmentSpec {
                vaddr: s.vaddr,
                mem_size: s.mem_size,
                perms: s.perms,
                data: s.data,
            })
            .collect(),
        relocations: relocs.keys().map(|&o| o as u32).collect(),
        load_size,
    };
    Ok(Converted { builder, agents })
}

fn section_names_in(
    sections: &SectionTable<'_, FileHeader64<LE>>,
    e: LE,
    vaddr: u64,
    memsz: u64,
    sec_name: &dyn Fn(&elf::SectionHeader64<LE>) -> String,
) -> String {
    let names: Vec<String> = sections
        .iter()
        .filter(|s| {
            s.sh_flags(e).0 & elf::SHF_ALLOC.0 != 0
                && s.sh_addr(e) >= vaddr
                && s.sh_addr(e) < vaddr.saturating_add(memsz)
        })
        .map(sec_name)
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn symbol_name(
    sections: &SectionTable<'_, FileHeader64<LE>>,
    e: LE,
    data: &[u8],
    symtab_idx: SectionIndex,
    sym: u32,
) -> String {
    let lookup = || -> Option<String> {
        let table = sections.symbol_table_by_index(e, data, symtab_idx).ok()?;
        let s = table.symbol(object::SymbolIndex(sym as usize)).ok()?;
        let n = s.name(e, table.strings()).ok()?;
        Some(demangle(&String::from_utf8_lossy(n)))
    };
    lookup().unwrap_or_else(|| format!("symbol #{sym}"))
}

/// Name of the `__tetd_agent_*` symbol at `addr` in `.symtab`, if any.
fn descriptor_symbol(
    sections: &SectionTable<'_, FileHeader64<LE>>,
    e: LE,
    data: &[u8],
    addr: u64,
) -> Option<String> {
    let table = sections.symbols(e, data, elf::SHT_SYMTAB).ok()?;
    table.iter().find_map(|s| {
        if s.st_value(e) != addr {
            return None;
        }
        let n = s.name(e, table.strings()).ok()?;
        let n = std::str::from_utf8(n).ok()?;
        n.starts_with(super::link::DESCRIPTOR_SYMBOL_PREFIX)
            .then(|| n.to_string())
    })
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn read_descriptors(
    sections: &SectionTable<'_, FileHeader64<LE>>,
    e: LE,
    data: &[u8],
    segs: &[Seg],
    relocs: &BTreeMap<u64, u64>,
    pkg: &Package<'_>,
) -> Result<Vec<FoundAgent>> {
    let Some((_, sec)) = sections.section_by_name(e, DESCRIPTOR_SECTION.as_bytes()) else {
        return err(format!(
            "no agents: the ELF has no {DESCRIPTOR_SECTION} section (mark a handler with #[tetd::agent(id = N)])"
        ));
    };
    if sec.sh_type(e) != elf::SHT_PROGBITS {
        return err(format!("section {DESCRIPTOR_SECTION} has no contents"));
    }
    let bytes = sec.data(e, data).map_err(|_| {
        ConvertError(format!(
            "section {DESCRIPTOR_SECTION}: contents outside the ELF"
        ))
    })?;
    if bytes.is_empty() {
        return err(format!(
            "no agents: section {DESCRIPTOR_SECTION} is empty (mark a handler with #[tetd::agent(id = N)])"
        ));
    }
    if bytes.len() % DESCRIPTOR_SIZE != 0 {
        return err(format!(
            "section {DESCRIPTOR_SECTION} is {} bytes, not a multiple of the {DESCRIPTOR_SIZE}-byte \
             descriptor: something other than #[tetd::agent] placed data there",
            bytes.len()
        ));
    }
    let base = sec.sh_addr(e);
    let count = bytes.len() / DESCRIPTOR_SIZE;
    if count > MAX_AGENTS as usize {
        return err(format!(
            "{count} agents; an image holds at most {MAX_AGENTS}"
        ));
    }
    let mut out: Vec<FoundAgent> = Vec::with_capacity(count);
    for (i, d) in bytes.chunks_exact(DESCRIPTOR_SIZE).enumerate() {
        let Some(addr) = base.checked_add((i * DESCRIPTOR_SIZE) as u64) else {
            return err(format!(
                "section {DESCRIPTOR_SECTION}: address {base:#x} overflows"
            ));
        };
        let symbol = descriptor_symbol(sections, e, data, addr);
        let at = || {
            symbol
                .clone()
                .unwrap_or_else(|| format!("descriptor #{i} at {addr:#x}"))
        };
        let magic = u32_at(d, 0);
        if magic != DESCRIPTOR_MAGIC {
            return err(format!(
                "{}: bad descriptor magic {magic:#x} (expected {DESCRIPTOR_MAGIC:#x}): \
                 something other than #[tetd::agent] placed data in {DESCRIPTOR_SECTION}",
                at()
            ));
        }
        let abi_version = u32_at(d, 4);
        if abi_version != ABI_VERSION {
            return err(format!(
                "{}: built for agent ABI version {abi_version}, this tetd-pack packs version {ABI_VERSION}; \
                 rebuild the agent against the matching tetd-sdk",
                at()
            ));
        }
        let id = u32_at(d, 8);
        let mode_raw = u32_at(d, 12);
        let flags = u32_at(d, 16);
        let max_input = u32_at(d, 20);
        let max_output = u32_at(d, 24);
        let reserved = u32_at(d, 28);
        let mut name = [0u8; AGENT_NAME_LEN];
        name.copy_from_slice(&d[32..32 + AGENT_NAME_LEN]);
        if id == 0 {
            return err(format!("{}: agent id 0 is reserved", at()));
        }
        let mode = if mode_raw == MODE_FROM_MANIFEST {
            pkg.settings.mode
        } else {
            Mode::from_u32(mode_raw)
                .ok_or_else(|| ConvertError(format!("{}: unknown mode {mode_raw}", at())))?
        };
        if flags & !AGENT_FLAGS_ALL != 0 {
            return err(format!("{}: unknown flag bits {flags:#x}", at()));
        }
        if reserved != 0 {
            return err(format!("{}: reserved field is {reserved:#x}, not 0", at()));
        }
        if abi::decode_name(&name).is_none() {
            return err(format!("{}: the name is not NUL-padded UTF-8", at()));
        }
        for (field, v) in [("max_input", max_input), ("max_output", max_output)] {
            if v > MAX_IO {
                return err(format!("{}: {field} {v} is larger than {MAX_IO}", at()));
            }
        }
        let slot = addr.wrapping_add(DESCRIPTOR_ENTRY_OFFSET as u64);
        let Some(&entry) = relocs.get(&slot) else {
            return err(format!(
                "{}: the entry pointer at {slot:#x} has no R_X86_64_RELATIVE relocation \
                 (was the agent compiled position independent?)",
                at()
            ));
        };
        if !segs
            .iter()
            .any(|s| s.perms & PERM_X != 0 && entry >= s.vaddr && entry < s.vaddr + s.mem_size)
        {
            return err(format!(
                "{}: entry {entry:#x} is not inside an executable segment",
                at()
            ));
        }
        let mut max_input = if max_input == 0 {
            pkg.settings.max_input
        } else {
            max_input
        };
        let mut max_output = if max_output == 0 {
            pkg.settings.max_output
        } else {
            max_output
        };
        if flags & abi::AGENT_FLAG_ENCRYPTED != 0 {
            // The agent declares plaintext limits; the manifest holds what
            // crosses the wire (docs/encryption.md, "Sizes").
            let wire_in = tetd::session::wire_max_input(max_input).filter(|v| *v <= MAX_IO);
            let wire_out = tetd::session::wire_max_output(max_output).filter(|v| *v <= MAX_IO);
            let (Some(wire_in), Some(wire_out)) = (wire_in, wire_out) else {
                return err(format!(
                    "{}: encrypted agent: max_input {max_input} + {} / max_output {max_output} + {} \
                     bytes of session overhead exceed {MAX_IO}",
                    at(),
                    tetd::session::REQUEST_OVERHEAD,
                    tetd::session::REPLY_OVERHEAD
                ));
            };
            max_input = wire_in;
            max_output = wire_out;
        }
        let record = AgentRecord {
            id,
            mode,
            flags,
            max_input,
            max_output,
            entry,
            name,
        };
        let found = FoundAgent { record, symbol };
        if let Some(prev) = out.iter().find(|a| a.record.id == id) {
            return err(format!(
                "duplicate agent id {id}: agents {} and {} both use it; give each agent its own id",
                prev.describe(),
                found.describe()
            ));
        }
        out.push(found);
    }
    out.sort_by_key(|a| a.record.id);
    Ok(out)
}

/// One line per agent, for messages.
pub fn agent_summary(agents: &[FoundAgent]) -> String {
    let mut s = String::new();
    for a in agents {
        let _ = write!(s, "{} {}, ", a.record.id, a.record.name());
    }
    s.trim_end_matches([' ', ',']).to_string()
}
