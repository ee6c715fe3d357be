//! `tetdg-objfix IN.o OUT.o`: prepare the Rust part of `tetdg.ko` for the
//! Linux x86-64 module loader.
//!
//! The precompiled `core` of the `x86_64-unknown-none` target is built with
//! `relocation-model=pic`, so some of its code reaches functions through the
//! GOT (`R_X86_64_GOTPCREL`). A relocatable object has no GOT and the module
//! loader of Linux 6.1 (`arch/x86/kernel/module.c`, `__apply_relocate_add`)
//! only knows `NONE, 64, 32, 32S, PC32, PLT32, PC64`. This tool builds a
//! private GOT: one 8-byte slot per referenced symbol in a new data section
//! `.data.tetdg_got` filled by `R_X86_64_64` relocations, and rewrites each
//! `GOTPCREL(S) + A` into `PC32(slot(S)) + A`, which computes exactly the same
//! displacement (`GOT + G + A - P` with `GOT + G = slot(S)`).
//!
//! It then checks every relocation that applies to an allocated section and
//! fails, naming the section, offset and symbol, on any type the module
//! loader would reject (or, for `R_X86_64_32`, would overflow on: module
//! addresses are in the top 2 GiB, which only sign-extended 32-bit fields
//! reach).
use std::collections::HashMap;
use std::process::ExitCode;

use object::build::elf::{Builder, Relocation, SectionData, SymbolId};
use object::build::{ByteString, Id};
use object::elf;

mod rel {
    pub const NONE: u32 = 0;
    pub const R64: u32 = 1;
    pub const PC32: u32 = 2;
    pub const GOTPCREL: u32 = 9;
    pub const R32: u32 = 10;
    pub const R32S: u32 = 11;
    pub const PC64: u32 = 24;
    pub const PLT32: u32 = 4;
    pub const GOTPCRELX: u32 = 41;
    pub const REX_GOTPCRELX: u32 = 42;

    /// Types `arch/x86/kernel/module.c` (6.1) applies without overflow for
    /// module addresses.
    pub fn accepted(t: u32) -> bool {
        matches!(t, NONE | R64 | PC32 | R32S | PC64 | PLT32)
    }

    pub fn name(t: u32) -> String {
        let n = match t {
            NONE => "R_X86_64_NONE",
            R64 => "R_X86_64_64",
            PC32 => "R_X86_64_PC32",
            3 => "R_X86_64_GOT32",
            PLT32 => "R_X86_64_PLT32",
            GOTPCREL => "R_X86_64_GOTPCREL",
            R32 => "R_X86_64_32",
            R32S => "R_X86_64_32S",
            PC64 => "R_X86_64_PC64",
            19..=23 => "R_X86_64_TLS*",
            25 => "R_X86_64_GOTOFF64",
            26 => "R_X86_64_GOTPC32",
            GOTPCRELX => "R_X86_64_GOTPCRELX",
            REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
            _ => return format!("relocation type {t}"),
        };
        n.to_string()
    }
}

fn run(input: &str, output: &str) -> Result<String, String> {
    let data = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let (out, note) = fix(&data, input)?;
    std::fs::write(output, &out).map_err(|e| format!("{output}: {e}"))?;
    Ok(note)
}

/// Rewrite and check one object (`input` names it in messages). Returns
/// the new object and a summary line.
fn fix(data: &[u8], input: &str) -> Result<(Vec<u8>, String), String> {
    let mut b = Builder::read(data).map_err(|e| format!("{input}: not an ELF object: {e}"))?;
    if b.header.e_type != elf::ET_REL {
        return Err(format!("{input}: not a relocatable object (ET_REL)"));
    }
    if b.header.e_machine != elf::EM_X86_64 {
        return Err(format!("{input}: not an x86-64 object"));
    }
    let symtab = b
        .sections
        .iter()
        .find(|s| matches!(s.data, SectionData::Symbol))
        .map(|s| s.id())
        .ok_or_else(|| format!("{input}: no symbol table"))?;

    // Pass 1: collect the symbols reached through the GOT.
    // Keyed by the symbol's table index (`SymbolId` is not `Hash`).
    let mut slots: HashMap<usize, u64> = HashMap::new();
    let mut order: Vec<SymbolId> = Vec::new();
    for s in b.sections.iter() {
        if let SectionData::Relocation(rels) = &s.data {
            for r in rels {
                if matches!(
                    r.r_type.0,
                    rel::GOTPCREL | rel::GOTPCRELX | rel::REX_GOTPCRELX
                ) {
                    let sym = r.symbol.ok_or_else(|| {
                        format!("{input}: {}: GOT relocation without a symbol", s.name)
                    })?;
                    if let std::collections::hash_map::Entry::Vacant(v) = slots.entry(sym.index()) {
                        v.insert(order.len() as u64 * 8);
                        order.push(sym);
                    }
                }
            }
        }
    }

    let mut note = String::new();
    if !order.is_empty() {
        // The GOT section and a local symbol for it.
        let got = b.sections.add();
        got.name = ByteString::from(&b".data.tetdg_got"[..]);
        got.sh_type = elf::SHT_PROGBITS;
        got.sh_flags = elf::SectionFlags(elf::SHF_ALLOC.0 | elf::SHF_WRITE.0);
        got.sh_addralign = 8;
        got.data = SectionData::Data(vec![0u8; order.len() * 8].into());
        let got_id = got.id();

        let sym = b.symbols.add();
        sym.name = ByteString::from(&b"__tetdg_got"[..]);
        sym.section = Some(got_id);
        sym.st_info = elf::SymbolInfo::new(elf::STB_LOCAL, elf::STT_OBJECT);
        sym.st_value = 0;
        sym.st_size = order.len() as u64 * 8;
        let got_sym = sym.id();

        let rela = b.sections.add();
        rela.name = ByteString::from(&b".rela.data.tetdg_got"[..]);
        rela.sh_type = elf::SHT_RELA;
        rela.sh_flags = elf::SHF_INFO_LINK;
        rela.sh_addralign = 8;
        rela.sh_entsize = 24;
        rela.sh_link_section = Some(symtab);
        rela.sh_info_section = Some(got_id);
        rela.data = SectionData::Relocation(
            order
                .iter()
                .map(|s| Relocation {
                    r_offset: slots[&s.index()],
                    symbol: Some(*s),
                    r_type: elf::RelocationType(rel::R64),
                    r_addend: 0,
                })
                .collect(),
        );

        // Pass 2: retarget the GOT-relative relocations to the slots.
        let mut rewritten = 0usize;
        for s in b.sections.iter_mut() {
            if let SectionData::Relocation(rels) = &mut s.data {
                for r in rels.iter_mut() {
                    if matches!(
                        r.r_type.0,
                        rel::GOTPCREL | rel::GOTPCRELX | rel::REX_GOTPCRELX
                    ) {
                        let sym = r.symbol.expect("checked in pass 1");
                        r.r_type = elf::RelocationType(rel::PC32);
                        r.r_addend = r
                            .r_addend
                            .checked_add(slots[&sym.index()] as i64)
                            .ok_or_else(|| format!("{}: addend overflow", s.name))?;
                        r.symbol = Some(got_sym);
                        rewritten += 1;
                    }
                }
            }
        }
        note = format!(
            "{rewritten} GOT-relative relocation(s) through {} private GOT slot(s); ",
            order.len()
        );
    }

    // Check what the module loader will see.
    let mut bad = Vec::new();
    let mut checked = 0usize;
    for s in b.sections.iter() {
        let SectionData::Relocation(rels) = &s.data else {
            continue;
        };
        let Some(target) = s.sh_info_section else {
            continue;
        };
        let target = b.sections.get(target);
        if !target.is_alloc() {
            continue; // debug info: never applied by the module loader
        }
        for r in rels {
            checked += 1;
            if !rel::accepted(r.r_type.0) {
                let sym = r
                    .symbol
                    .map(|id| b.symbols.get(id).name.to_string())
                    .unwrap_or_else(|| "<none>".into());
                bad.push(format!(
                    "  {} at {}+{:#x} against `{}`",
                    rel::name(r.r_type.0),
                    target.name,
                    r.r_offset,
                    sym
                ));
            }
        }
    }
    if !bad.is_empty() {
        let n = bad.len();
        bad.truncate(20);
        return Err(format!(
            "{input}: {n} relocation(s) the Linux x86-64 module loader does not accept \
             (allowed: NONE, 64, 32S, PC32, PLT32, PC64):\n{}",
            bad.join("\n")
        ));
    }

    let mut out = Vec::new();
    b.write(&mut out)
        .map_err(|e| format!("{input}: cannot write ELF: {e}"))?;
    Ok((
        out,
        format!("{note}{checked} relocation(s) in allocated sections, all accepted"),
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: tetdg-objfix IN.o OUT.o");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2]) {
        Ok(msg) => {
            println!("tetdg-objfix: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tetdg-objfix: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::{Object as _, ObjectSection as _, ObjectSymbol as _};
    use object::write::{Object, Relocation as WReloc, StandardSegment, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, RelocationFlags, RelocationTarget, SectionKind,
        SymbolFlags, SymbolKind, SymbolScope,
    };

    /// A relocatable x86-64 object whose .text (32 bytes) carries the given
    /// relocations `(offset, symbol, type, addend)`; symbol "dbg" puts the
    /// relocation into a .debug_info section instead.
    fn object_with(relocs: &[(u64, &str, u32, i64)]) -> Vec<u8> {
        let mut o = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = o.add_section(
            o.segment_name(StandardSegment::Text).to_vec(),
            b".text".to_vec(),
            SectionKind::Text,
        );
        o.append_section_data(text, &[0x90; 32], 16);
        let dbg = o.add_section(Vec::new(), b".debug_info".to_vec(), SectionKind::Debug);
        o.append_section_data(dbg, &[0; 16], 1);
        let mut ids = std::collections::HashMap::new();
        for &(off, name, ty, addend) in relocs {
            let sym = *ids.entry(name).or_insert_with(|| {
                o.add_symbol(Symbol {
                    name: name.as_bytes().to_vec(),
                    value: 0,
                    size: 0,
                    kind: SymbolKind::Text,
                    scope: SymbolScope::Linkage,
                    weak: false,
                    section: SymbolSection::Undefined,
                    flags: SymbolFlags::None,
                })
            });
            let section = if name == "dbg" { dbg } else { text };
            o.add_relocation(
                section,
                WReloc {
                    offset: off,
                    symbol: sym,
                    addend,
                    flags: RelocationFlags::Elf {
                        r_type: elf::RelocationType(ty),
                    },
                },
            )
            .unwrap();
        }
        o.write().unwrap()
    }

    fn relocs_of(f: &object::File<'_>, section: &str) -> Vec<(u64, String, u32, i64)> {
        let s = f.section_by_name(section).unwrap();
        let mut v: Vec<_> = s
            .relocations()
            .map(|(off, r)| {
                let RelocationTarget::Symbol(i) = r.target() else {
                    panic!("not a symbol")
                };
                let RelocationFlags::Elf { r_type } = r.flags() else {
                    panic!("not ELF")
                };
                let name = f.symbol_by_index(i).unwrap().name().unwrap().to_string();
                (off, name, r_type.0, r.addend())
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn gotpcrel_becomes_pc32_through_a_private_got() {
        let input = object_with(&[
            (3, "foo", rel::REX_GOTPCRELX, -4),
            (9, "bar", rel::GOTPCREL, -4),
            (15, "foo", rel::GOTPCREL, -4),
            (20, "baz", rel::PLT32, -4),
        ]);
        let (out, note) = fix(&input, "t.o").unwrap();
        assert!(
            note.starts_with("3 GOT-relative relocation(s) through 2 private GOT slot(s)"),
            "{note}"
        );
        let f = object::File::parse(&*out).unwrap();
        assert_eq!(f.section_by_name(".data.tetdg_got").unwrap().size(), 16);
        // one slot per symbol, filled with its address
        assert_eq!(
            relocs_of(&f, ".data.tetdg_got"),
            vec![
                (0, "foo".into(), rel::R64, 0),
                (8, "bar".into(), rel::R64, 0)
            ]
        );
        // GOTPCREL(S)+A == PC32(slot(S))+A
        assert_eq!(
            relocs_of(&f, ".text"),
            vec![
                (3, "__tetdg_got".into(), rel::PC32, -4),
                (9, "__tetdg_got".into(), rel::PC32, 8 - 4),
                (15, "__tetdg_got".into(), rel::PC32, -4),
                (20, "baz".into(), rel::PLT32, -4),
            ]
        );
    }

    #[test]
    fn forbidden_relocations_are_named() {
        let input = object_with(&[
            (4, "tls_thing", 23 /* TPOFF32 */, 0),
            (8, "abs32", rel::R32, 0),
        ]);
        let err = fix(&input, "t.o").unwrap_err();
        assert!(
            err.contains("2 relocation(s) the Linux x86-64 module loader does not accept"),
            "{err}"
        );
        assert!(
            err.contains("R_X86_64_TLS* at .text+0x4 against `tls_thing`"),
            "{err}"
        );
        assert!(
            err.contains("R_X86_64_32 at .text+0x8 against `abs32`"),
            "{err}"
        );
    }

    #[test]
    fn debug_sections_are_not_checked_and_clean_objects_pass() {
        let input = object_with(&[(0, "dbg", rel::R32, 0), (4, "f", rel::PC32, -4)]);
        let (_, note) = fix(&input, "t.o").unwrap();
        assert_eq!(note, "1 relocation(s) in allocated sections, all accepted");
    }

    #[test]
    fn non_elf_input_is_an_error() {
        let err = fix(b"not an object", "x.o").unwrap_err();
        assert!(err.starts_with("x.o: not an ELF object"), "{err}");
    }
}
