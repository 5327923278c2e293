//! Kernel addresses → symbol names, from /proc/kallsyms (text symbols are enough: drop and
//! consume locations are code addresses).

use std::path::Path;

use crate::host::Symbol;

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} lists only zero addresses (kptr_restrict); run as root to name kernel locations")]
    Hidden(String),
}

/// A sorted symbol table.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, name, module) sorted by address.
    syms: Vec<(u64, String, Option<String>)>,
}

impl Kallsyms {
    pub fn from_proc() -> Result<Self, KallsymsError> {
        Self::from_file(Path::new("/proc/kallsyms"))
    }

    pub fn from_file(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table = Self::parse(&text);
        if table.syms.is_empty() {
            return Err(KallsymsError::Hidden(path.display().to_string()));
        }
        Ok(table)
    }

    /// Parses `address type name [module]` lines, keeping text symbols with non-zero addresses.
    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<_> = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let ty = it.next()?;
                let name = it.next()?;
                let module = it
                    .next()
                    .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_owned());
                (addr != 0 && matches!(ty, "t" | "T" | "w" | "W"))
                    .then(|| (addr, name.to_owned(), module))
            })
            .collect();
        syms.sort_by_key(|s| s.0);
        Self { syms }
    }

    /// The symbol containing `addr` (the closest one at or below it).
    pub fn resolve(&self, addr: u64) -> Option<Symbol> {
        let idx = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, name, module) = &self.syms[idx];
        // Past the last symbol by more than a large function: not kernel text we know.
        if idx + 1 == self.syms.len() && addr - start > 1 << 20 {
            return None;
        }
        Some(Symbol {
            name: name.clone(),
            offset: addr - start,
            module: module.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81fed320 t ip_error
ffffffff81fed500 T ip_forward
ffffffff82000000 D some_data
ffffffffc0a01000 t br_handle_frame\t[bridge]
0000000000000000 T hidden
";

    #[test]
    fn resolves_inside_a_function() {
        let k = Kallsyms::parse(SAMPLE);
        let s = k.resolve(0xffff_ffff_81fe_d37a).expect("inside ip_error");
        assert_eq!(s.name, "ip_error");
        assert_eq!(s.offset, 0x5a);
        assert_eq!(s.to_string(), "ip_error+0x5a");
    }

    #[test]
    fn names_module_symbols_and_ignores_data() {
        let k = Kallsyms::parse(SAMPLE);
        let s = k.resolve(0xffff_ffff_c0a0_1010).expect("module text");
        assert_eq!(s.to_string(), "br_handle_frame+0x10 [bridge]");
        // `some_data` is not text: an address after ip_forward resolves to ip_forward.
        assert_eq!(
            k.resolve(0xffff_ffff_8200_0010).map(|s| s.name),
            Some("ip_forward".into())
        );
    }

    #[test]
    fn below_first_symbol_and_hidden_tables() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.resolve(0x1000), None);
        assert!(Kallsyms::parse("0000000000000000 T a\n").syms.is_empty());
    }
}
