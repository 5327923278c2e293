//! Links the kernel programs' kfunc calls: each placeholder helper call
//! (`tracer_common::config::kfunc`) becomes a call of the kernel function by its BTF id, or,
//! where the kernel lacks the function, an instruction the verifier accepts in the dead branch
//! that guards it. aya 0.14 cannot resolve kfuncs itself, so this runs on the object's bytes
//! before aya parses them.

use object::{Object as _, ObjectSection as _, SectionFlags, elf::SHF_EXECINSTR};
use tracer_common::config::kfunc;

use super::btf::Btf;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_X`.
const MOV64_REG: u8 = 0xbf;
/// `src_reg` of a call to a kernel function named by BTF id (vmlinux when `off` is 0).
const PSEUDO_KFUNC_CALL: u8 = 2;
const INSN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum KfuncError {
    #[error("the eBPF object is not a readable ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("section {0} lies outside the eBPF object")]
    Section(String),
}

/// The running kernel's BTF ids of the kfuncs the programs call (`None`: not in this kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kfuncs {
    ids: Vec<(i32, Option<u32>)>,
}

impl Kfuncs {
    pub fn from_btf(btf: &mut Btf) -> Self {
        Self {
            ids: kfunc::ALL
                .iter()
                .map(|&(placeholder, name)| (placeholder, btf.func_id(name)))
                .collect(),
        }
    }

    /// The same kfuncs, all treated as missing (the kernel refused a program calling them).
    pub fn without_any(&self) -> Self {
        Self {
            ids: self.ids.iter().map(|&(p, _)| (p, None)).collect(),
        }
    }

    /// Whether the kernel has the kfunc `placeholder` stands for.
    pub fn has(&self, placeholder: i32) -> bool {
        self.id(placeholder).is_some()
    }

    fn id(&self, placeholder: i32) -> Option<u32> {
        self.ids
            .iter()
            .find(|(p, _)| *p == placeholder)
            .and_then(|(_, id)| *id)
    }

    fn is_placeholder(&self, imm: i32) -> bool {
        self.ids.iter().any(|(p, _)| *p == imm)
    }
}

/// An eBPF object with its placeholders rewritten, 8-byte aligned as the ELF parser wants it.
pub struct Linked {
    words: Vec<u64>,
    len: usize,
    /// Placeholder calls turned into kfunc calls, and into `r0 = r1`.
    pub linked: usize,
    pub stubbed: usize,
}

impl Linked {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Rewrites every placeholder call in the executable sections of `object`.
pub fn link(object: &[u8], kfuncs: &Kfuncs) -> Result<Linked, KfuncError> {
    let mut ranges = Vec::new();
    let elf = object::File::parse(object)?;
    for section in elf.sections() {
        let SectionFlags::Elf { sh_flags } = section.flags() else {
            continue;
        };
        if sh_flags & u64::from(SHF_EXECINSTR) == 0 {
            continue;
        }
        if let Some((start, size)) = section.file_range() {
            let end = start
                .checked_add(size)
                .filter(|&e| e <= object.len() as u64);
            let Some(end) = end else {
                return Err(KfuncError::Section(
                    section.name().unwrap_or("?").to_owned(),
                ));
            };
            ranges.push((start as usize, end as usize));
        }
    }
    let mut out = Linked {
        words: vec![0u64; object.len().div_ceil(8)],
        len: object.len(),
        linked: 0,
        stubbed: 0,
    };
    out.bytes_mut().copy_from_slice(object);
    for (start, end) in ranges {
        let mut at = start;
        while at + INSN <= end {
            let bytes = out.bytes_mut();
            let insn = &mut bytes[at..at + INSN];
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            // A helper call: no registers, no offset.
            if insn[0] == CALL && insn[1] == 0 && insn[2..4] == [0, 0] && kfuncs.is_placeholder(imm)
            {
                match kfuncs.id(imm) {
                    Some(id) => {
                        insn[1] = PSEUDO_KFUNC_CALL << 4;
                        insn[4..8].copy_from_slice(&id.to_le_bytes());
                        out.linked += 1;
                    }
                    None => {
                        // r0 = r1: well-formed, never run (its branch is dead), and the
                        // verifier removes it.
                        insn.copy_from_slice(&[MOV64_REG, 0x10, 0, 0, 0, 0, 0, 0]);
                        out.stubbed += 1;
                    }
                }
            }
            at += INSN;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kfuncs(id: Option<u32>) -> Kfuncs {
        Kfuncs {
            ids: vec![(kfunc::RDONLY_CAST, id)],
        }
    }

    /// Instructions of every executable section, as (code, regs, imm).
    fn calls(object: &[u8]) -> Vec<(u8, u8, i32)> {
        let elf = object::File::parse(object).expect("elf");
        let mut out = Vec::new();
        for s in elf.sections() {
            let SectionFlags::Elf { sh_flags } = s.flags() else {
                continue;
            };
            if sh_flags & u64::from(SHF_EXECINSTR) == 0 {
                continue;
            }
            for insn in s.data().expect("data").chunks_exact(INSN) {
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                out.push((insn[0], insn[1], imm));
            }
        }
        out
    }

    fn placeholders(object: &[u8]) -> usize {
        calls(object)
            .iter()
            .filter(|&&(code, regs, imm)| code == CALL && regs == 0 && imm == kfunc::RDONLY_CAST)
            .count()
    }

    #[test]
    fn the_programs_call_the_placeholder() {
        assert!(placeholders(super::super::loader::OBJECT) > 0);
    }

    #[test]
    fn placeholders_become_kfunc_calls_by_btf_id() {
        let object = super::super::loader::OBJECT;
        let before = placeholders(object);
        let linked = link(object, &kfuncs(Some(54321))).expect("link");
        assert_eq!((linked.linked, linked.stubbed), (before, 0));
        assert_eq!(placeholders(linked.bytes()), 0);
        let kfunc_calls = calls(linked.bytes())
            .into_iter()
            .filter(|&(code, regs, imm)| code == CALL && regs == 0x20 && imm == 54321)
            .count();
        assert_eq!(kfunc_calls, before);
        // Nothing else moved.
        assert_eq!(linked.bytes().len(), object.len());
        let differing = object
            .iter()
            .zip(linked.bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert!(differing <= before * 5, "{differing} bytes changed");
    }

    #[test]
    fn without_the_kfunc_placeholders_become_register_moves() {
        let object = super::super::loader::OBJECT;
        let before = placeholders(object);
        let linked = link(object, &kfuncs(None)).expect("link");
        assert_eq!((linked.linked, linked.stubbed), (0, before));
        assert_eq!(placeholders(linked.bytes()), 0);
        let moves = calls(linked.bytes())
            .into_iter()
            .filter(|&(code, regs, imm)| code == MOV64_REG && regs == 0x10 && imm == 0)
            .count();
        assert!(moves >= before);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(link(b"not an elf file", &kfuncs(None)).is_err());
    }
}
