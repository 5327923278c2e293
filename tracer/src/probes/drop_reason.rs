//! Names of `enum skb_drop_reason`, read from the running kernel's BTF (values move between
//! kernel versions, so none is compiled in).

use std::collections::HashMap;

use super::btf::{Btf, BtfError};

const PREFIX: &str = "SKB_DROP_REASON_";

/// Drop reason value → name without the `SKB_DROP_REASON_` prefix.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
}

impl DropReasons {
    pub fn from_btf(btf: &mut Btf) -> Result<Self, BtfError> {
        Ok(Self::from_pairs(btf.enum_values("skb_drop_reason")?))
    }

    /// Builds the table from (enum variant, value) pairs; variants that are not reasons
    /// (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`, `SKB_DROP_REASON_MAX`) are kept under their own
    /// names so nothing is shown as a bare number.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, i64)>) -> Self {
        let names = pairs
            .into_iter()
            .filter_map(|(name, value)| {
                let value = u32::try_from(value).ok()?;
                let short = name.strip_prefix(PREFIX).unwrap_or(&name).to_owned();
                Some((value, short))
            })
            .collect();
        Self { names }
    }

    /// The reason's name, or `UNKNOWN(<n>)` for values the kernel's BTF does not list
    /// (subsystem reasons carry their subsystem in the upper 16 bits).
    pub fn name(&self, reason: u32) -> String {
        match self.names.get(&reason) {
            Some(n) => n.clone(),
            None => format!("UNKNOWN({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_prefix_and_keeps_unknown_numbers_visible() {
        let t = DropReasons::from_pairs([
            ("SKB_NOT_DROPPED_YET".to_owned(), 0),
            ("SKB_DROP_REASON_NO_SOCKET".to_owned(), 3),
            ("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87),
        ]);
        assert_eq!(t.name(87), "IP_INADDRERRORS");
        assert_eq!(t.name(3), "NO_SOCKET");
        assert_eq!(t.name(0), "SKB_NOT_DROPPED_YET");
        assert_eq!(t.name(4242), "UNKNOWN(4242)");
    }
}
