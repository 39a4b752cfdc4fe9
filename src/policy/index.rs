//! The suffix index: every list's entries in one hash map from a lowercase wire name to the
//! set of lists that contain it (a bitset of list ids), so "which lists contain this name or
//! a parent of it" is one probe per label of the query name, for all lists at once.

use std::collections::HashMap;

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use rustc_hash::FxBuildHasher;

use crate::lists::EntryKind;
use crate::name;

pub use crate::config::ListId;

/// A set of lists, one bit per list id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListSet(pub u64);

impl ListSet {
    pub fn insert(&mut self, list: ListId) {
        self.0 |= list.bit();
    }

    pub fn contains(self, list: ListId) -> bool {
        self.0 & list.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersect(self, other: ListSet) -> ListSet {
        ListSet(self.0 & other.0)
    }

    /// The lowest list id in the set.
    pub fn first(self) -> Option<ListId> {
        (self.0 != 0).then(|| ListId(self.0.trailing_zeros() as u8))
    }
}

/// What one stored name says about each list.
#[derive(Debug, Clone, Copy, Default)]
struct Stored {
    block: u64,
    except: u64,
}

/// Which lists contain a name, and the most specific of its suffixes with a block entry.
#[derive(Debug, Clone, Copy)]
pub struct Matches {
    pub lists: ListSet,
    /// That suffix's offset in the name and the lists whose entries it is: for those, the
    /// matched zone without a second pass.
    nearest: (u8, u64),
}

/// One stored name: where it starts in the arena, and the id of its pattern (its list bits).
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: u32,
    value: u32,
}

/// Immutable once built; see [`IndexBuilder`]. Every stored name lives once in `arena`
/// (wire format, back to back); the table holds 8-byte slots, and the list bits are shared by
/// all names with the same ones, so a name costs its wire bytes plus about ten.
#[derive(Default)]
pub struct SuffixIndex {
    arena: Vec<u8>,
    table: HashTable<Slot>,
    patterns: Vec<Stored>,
}

impl std::fmt::Debug for SuffixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuffixIndex")
            .field("names", &self.table.len())
            .field("bytes", &self.memory_bytes())
            .finish()
    }
}

/// Collects entries of all lists, then becomes a [`SuffixIndex`]. Each name's list bits are
/// interned as they change, so a name costs 4 bytes for them while building, not 16.
#[derive(Default)]
pub struct IndexBuilder {
    arena: Vec<u8>,
    table: HashTable<Slot>,
    patterns: Vec<Stored>,
    ids: HashMap<(u64, u64), u32, FxBuildHasher>,
}

/// The id of the pattern `bits`, added if new.
fn intern(
    patterns: &mut Vec<Stored>,
    ids: &mut HashMap<(u64, u64), u32, FxBuildHasher>,
    bits: Stored,
) -> u32 {
    *ids.entry((bits.block, bits.except)).or_insert_with(|| {
        patterns.push(bits);
        (patterns.len() - 1) as u32
    })
}

fn hash(name: &[u8]) -> u64 {
    FxBuildHasher.hash_one(name)
}

/// The wire name stored at `offset` (names are self-delimiting: 0 only ends them).
fn stored_name(arena: &[u8], offset: u32) -> &[u8] {
    let start = offset as usize;
    let mut at = start;
    while arena[at] != 0 {
        at += 1 + arena[at] as usize;
    }
    &arena[start..=at]
}

/// Whether the name at `offset` is `name`: the bytes up to and including `name`'s final 0
/// match, and a 0 can only be a name's end.
fn is_stored_at(arena: &[u8], offset: u32, name: &[u8]) -> bool {
    arena.get(offset as usize..offset as usize + name.len()) == Some(name)
}

impl IndexBuilder {
    pub fn insert(&mut self, name: &[u8], list: ListId, kind: EntryKind) {
        let IndexBuilder {
            arena,
            table,
            patterns,
            ids,
        } = self;
        let hash = hash(name);
        let entry = table.entry(
            hash,
            |slot| is_stored_at(arena, slot.offset, name),
            |slot| self::hash(stored_name(arena, slot.offset)),
        );
        let mut bits = match &entry {
            Entry::Occupied(slot) => patterns[slot.get().value as usize],
            Entry::Vacant(_) => Stored::default(),
        };
        match kind {
            EntryKind::Block => bits.block |= list.bit(),
            EntryKind::Exception => bits.except |= list.bit(),
        }
        let value = intern(patterns, ids, bits);
        match entry {
            Entry::Occupied(mut slot) => slot.get_mut().value = value,
            Entry::Vacant(vacant) => {
                let offset = u32::try_from(arena.len()).expect("lists under 4 GiB of names");
                arena.extend_from_slice(name);
                vacant.insert(Slot { offset, value });
            }
        }
    }

    pub fn build(self) -> SuffixIndex {
        let IndexBuilder {
            mut arena,
            mut table,
            patterns,
            ids: _,
        } = self;
        arena.shrink_to_fit();
        table.shrink_to_fit(|slot| hash(stored_name(&arena, slot.offset)));
        SuffixIndex {
            arena,
            table,
            patterns,
        }
    }
}

impl SuffixIndex {
    /// The lists containing `name` (lowercase wire format, at most [`name::MAX_WIRE_LEN`] bytes):
    /// a list contains a name when one of its entries is the name or a parent of it, and none
    /// of its exceptions is.
    pub fn lookup(&self, name: &[u8]) -> Matches {
        let mut block = 0u64;
        let mut except = 0u64;
        let mut nearest = (0u8, 0u64);
        for (offset, suffix) in name::suffixes(name) {
            if let Some(stored) = self.find(suffix) {
                if block == 0 {
                    nearest = (offset as u8, stored.block);
                }
                block |= stored.block;
                except |= stored.except;
            }
        }
        Matches {
            lists: ListSet(block & !except),
            nearest,
        }
    }

    /// Where in `name` the most specific entry of `list` that blocks it starts (the matched
    /// zone), given the name's `matches`; `None` when `list` has no entry for any suffix.
    pub fn zone_of(&self, name: &[u8], matches: &Matches, list: ListId) -> Option<usize> {
        let (offset, lists) = matches.nearest;
        if lists & list.bit() != 0 {
            return Some(offset as usize);
        }
        name::suffixes(name).find_map(|(offset, suffix)| {
            let stored = self.find(suffix)?;
            (stored.block & list.bit() != 0).then_some(offset)
        })
    }

    /// What the stored `name` says about each list.
    #[inline(always)]
    fn find(&self, name: &[u8]) -> Option<Stored> {
        let slot = self.table.find(hash(name), |slot| {
            is_stored_at(&self.arena, slot.offset, name)
        })?;
        Some(self.patterns[slot.value as usize])
    }

    /// Distinct stored names.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Heap bytes held: the name arena, the table (slots and control bytes), the patterns.
    pub fn memory_bytes(&self) -> usize {
        self.arena.capacity()
            + self.table.capacity() * (std::mem::size_of::<Slot>() + 1)
            + self.patterns.capacity() * std::mem::size_of::<Stored>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::from_text;

    fn index(entries: &[(&str, u8, EntryKind)]) -> SuffixIndex {
        let mut builder = IndexBuilder::default();
        for (name, list, kind) in entries {
            builder.insert(&from_text(name).unwrap(), ListId(*list), *kind);
        }
        builder.build()
    }

    #[test]
    fn a_name_matches_itself_and_every_name_below_it() {
        let index = index(&[
            ("tiktok.com", 0, EntryKind::Block),
            ("t.me", 1, EntryKind::Block),
        ]);
        let lists = |n: &str| index.lookup(&from_text(n).unwrap()).lists;
        assert_eq!(lists("tiktok.com"), ListSet(0b01));
        assert_eq!(lists("api16-normal-no1a.www.tiktok.com"), ListSet(0b01));
        assert_eq!(lists("nottiktok.com"), ListSet(0));
        assert_eq!(lists("com"), ListSet(0));
        assert_eq!(lists("x.t.me"), ListSet(0b10));
    }

    #[test]
    fn many_names_are_all_found_and_others_are_not() {
        fn names(prefix: &'static str) -> impl Iterator<Item = Vec<u8>> {
            (0..20_000).map(move |i| from_text(&format!("{prefix}{i}.test")).unwrap())
        }
        let mut builder = IndexBuilder::default();
        for name in names("in") {
            builder.insert(&name, ListId(3), EntryKind::Block);
        }
        let index = builder.build();
        for (prefix, want) in [("in", ListSet(0b1000)), ("out", ListSet(0))] {
            for name in names(prefix) {
                let lists = index.lookup(&name).lists;
                assert_eq!(lists, want, "{}", crate::name::to_text(&name));
            }
        }
    }

    #[test]
    fn exceptions_take_names_out_of_their_own_list_only() {
        let index = index(&[
            ("example.com", 0, EntryKind::Block),
            ("ok.example.com", 0, EntryKind::Exception),
            ("example.com", 1, EntryKind::Block),
        ]);
        let lists = index.lookup(&from_text("a.ok.example.com").unwrap()).lists;
        assert_eq!(lists, ListSet(0b10));
    }

    #[test]
    fn zone_offset_is_the_most_specific_entry_of_each_list() {
        let index = index(&[
            ("tiktok.com", 0, EntryKind::Block),
            ("www.tiktok.com", 0, EntryKind::Block),
            ("com", 1, EntryKind::Block),
        ]);
        let name = from_text("a.www.tiktok.com").unwrap();
        let matches = index.lookup(&name);
        let zone = |list| &name[index.zone_of(&name, &matches, ListId(list)).unwrap()..];
        assert_eq!(zone(0), from_text("www.tiktok.com").unwrap());
        assert_eq!(zone(1), from_text("com").unwrap());
        assert_eq!(index.zone_of(&name, &matches, ListId(2)), None);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::name::from_text;

    /// Reference: for each list, test every entry against the name as text, the slow way.
    fn naive(entries: &[(String, u8, EntryKind)], name: &str) -> u64 {
        let covers = |entry: &str| name == entry || name.ends_with(&format!(".{entry}"));
        let mut block = 0u64;
        let mut except = 0u64;
        for (entry, list, kind) in entries {
            if covers(entry) {
                match kind {
                    EntryKind::Block => block |= 1 << list,
                    EntryKind::Exception => except |= 1 << list,
                }
            }
        }
        block & !except
    }

    fn label() -> impl Strategy<Value = String> {
        // A tiny alphabet so random names often share suffixes with random entries.
        prop::sample::select(vec!["a", "b", "ab", "com", "no", "tiktok", "x-y"])
            .prop_map(str::to_owned)
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
    }

    fn entry() -> impl Strategy<Value = (String, u8, EntryKind)> {
        let kind = prop_oneof![4 => Just(EntryKind::Block), 1 => Just(EntryKind::Exception)];
        (domain(), 0u8..6, kind)
    }

    proptest! {
        #[test]
        fn index_agrees_with_the_naive_reference(
            entries in prop::collection::vec(entry(), 0..40),
            names in prop::collection::vec(domain(), 1..20),
        ) {
            let mut builder = IndexBuilder::default();
            for (entry, list, kind) in &entries {
                builder.insert(&from_text(entry).unwrap(), ListId(*list), *kind);
            }
            let index = builder.build();
            for name in &names {
                let wire = from_text(name).unwrap();
                let matches = index.lookup(&wire);
                prop_assert_eq!(matches.lists.0, naive(&entries, name), "name {}", name);
                // The zone of each matched list is that list's most specific block entry.
                let mut lists = matches.lists.0;
                while lists != 0 {
                    let list = lists.trailing_zeros() as u8;
                    lists &= lists - 1;
                    let zone_at = index.zone_of(&wire, &matches, ListId(list)).unwrap();
                    let zone = crate::name::to_text(&wire[zone_at..]);
                    let best = entries
                        .iter()
                        .filter(|(e, l, k)| *l == list && *k == EntryKind::Block && (name == e || name.ends_with(&format!(".{e}"))))
                        .map(|(e, _, _)| e.len())
                        .max();
                    prop_assert_eq!(Some(zone.len()), best, "zone of list {} for {}", list, name);
                }
            }
        }
    }
}
