//! The driver's object table: ids, ownership and limits.
//!
//! Listeners and connections live in slots; an id names a slot and the generation the slot had
//! when the object was put there, so finding an object by id is one index (no search) and an id
//! whose object is gone never finds a newer one. Each handle's count is kept beside, so a limit
//! check does not walk the table.

use alloc::vec::Vec;

use ksys::ntdef::{NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_QUOTA_EXCEEDED};

/// How many objects the driver, and one handle, may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections and listeners in the whole driver.
    pub total: usize,
    /// Connections and listeners one handle may hold.
    pub per_handle: usize,
}

struct Slot<T> {
    generation: u32,
    entry: Option<(usize, T)>,
}

/// Objects of type `T` by id, each with the handle (owner) that created it.
pub struct Objects<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// (owner, objects it holds), for owners holding at least one.
    owners: Vec<(usize, usize)>,
    len: usize,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Objects<T> {
    /// An empty table (allocates nothing until the first insert).
    pub const fn new() -> Self {
        Objects {
            slots: Vec::new(),
            free: Vec::new(),
            owners: Vec::new(),
            len: 0,
        }
    }

    fn split(id: u64) -> (usize, u32) {
        // Low 32 bits: slot + 1 (so no id is 0); high 32 bits: the slot's generation.
        (
            ((id & 0xffff_ffff) as usize).wrapping_sub(1),
            (id >> 32) as u32,
        )
    }

    /// Objects held in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Objects `owner` holds.
    pub fn owned_by(&self, owner: usize) -> usize {
        self.owners
            .iter()
            .find(|(o, _)| *o == owner)
            .map_or(0, |(_, n)| *n)
    }

    /// Whether `owner` may put one more object in.
    pub fn check(&self, owner: usize, limits: &Limits) -> Result<(), NTSTATUS> {
        if self.len() >= limits.total || self.owned_by(owner) >= limits.per_handle {
            return Err(STATUS_QUOTA_EXCEEDED);
        }
        Ok(())
    }

    /// Puts in the object `make` builds for its new id. STATUS_QUOTA_EXCEEDED at a limit,
    /// STATUS_INSUFFICIENT_RESOURCES when the table cannot grow; nothing changes on error.
    pub fn insert(
        &mut self,
        owner: usize,
        limits: &Limits,
        make: impl FnOnce(u64) -> T,
    ) -> Result<u64, NTSTATUS> {
        self.check(owner, limits)?;
        let owner_at = self.owners.iter().position(|(o, _)| *o == owner);
        if owner_at.is_none() && self.owners.try_reserve(1).is_err() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None => {
                if self.slots.len() >= u32::MAX as usize - 1
                    || self.slots.try_reserve(1).is_err()
                    || self.free.try_reserve(self.slots.len() + 1).is_err()
                {
                    return Err(STATUS_INSUFFICIENT_RESOURCES);
                }
                // `free` has room for every slot, so `remove` never needs to allocate.
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        let id = (u64::from(slot.generation) << 32) | (index as u64 + 1);
        slot.entry = Some((owner, make(id)));
        match owner_at {
            Some(at) => self.owners[at].1 += 1,
            None => self.owners.push((owner, 1)),
        }
        self.len += 1;
        Ok(id)
    }

    /// The object `id` names, with its owner.
    pub fn get(&self, id: u64) -> Option<(usize, &T)> {
        let (index, generation) = Self::split(id);
        let slot = self.slots.get(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.entry.as_ref().map(|(owner, value)| (*owner, value))
    }

    /// Takes out the object `id` names if `owner` holds it (whoever holds it, for None).
    pub fn remove(&mut self, id: u64, owner: Option<usize>) -> Option<T> {
        let (index, generation) = Self::split(id);
        let slot = self.slots.get_mut(index)?;
        let held_by = slot.entry.as_ref().map(|e| e.0)?;
        if slot.generation != generation || owner.is_some_and(|o| o != held_by) {
            return None;
        }
        let owner = held_by;
        let (_, value) = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        // Room reserved in `insert`.
        self.free.push(index as u32);
        self.len -= 1;
        if let Some(at) = self.owners.iter().position(|(o, _)| *o == owner) {
            self.owners[at].1 -= 1;
            if self.owners[at].1 == 0 {
                self.owners.swap_remove(at);
            }
        }
        Some(value)
    }

    /// The ids `owner` holds (all of them when `owner` is None), as far as `out` can grow.
    pub fn ids(&self, owner: Option<usize>, out: &mut Vec<u64>) -> Result<(), NTSTATUS> {
        let wanted = owner.map_or(self.len, |o| self.owned_by(o));
        out.try_reserve(wanted)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some((o, _)) = &slot.entry {
                if owner.is_none_or(|wanted| wanted == *o) {
                    out.push((u64::from(slot.generation) << 32) | (index as u64 + 1));
                }
            }
        }
        Ok(())
    }

    /// The first id `owner` holds (any object's, for None).
    pub fn first(&self, owner: Option<usize>) -> Option<u64> {
        self.slots.iter().enumerate().find_map(|(index, slot)| {
            let (o, _) = slot.entry.as_ref()?;
            owner
                .is_none_or(|wanted| wanted == *o)
                .then(|| (u64::from(slot.generation) << 32) | (index as u64 + 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        total: 3,
        per_handle: 2,
    };

    #[test]
    fn ids_find_their_object_and_never_a_later_one_in_the_same_slot() {
        let mut t = Objects::new();
        let a = t.insert(1, &LIMITS, |id| id * 10).unwrap();
        assert_eq!(a, 1, "first ids are small");
        assert_eq!(t.get(a), Some((1, &10)));
        assert_eq!(t.remove(a, Some(2)), None, "another owner cannot take it");
        assert_eq!(t.remove(a, Some(1)), Some(10));
        let b = t.insert(1, &LIMITS, |id| id).unwrap();
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(b), Some((1, &b)));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(u64::MAX), None);
    }

    #[test]
    fn limits_count_per_owner_and_in_all() {
        let mut t = Objects::new();
        t.insert(1, &LIMITS, |_| ()).unwrap();
        let second = t.insert(1, &LIMITS, |_| ()).unwrap();
        assert_eq!(t.insert(1, &LIMITS, |_| ()), Err(STATUS_QUOTA_EXCEEDED));
        t.insert(2, &LIMITS, |_| ()).unwrap();
        assert_eq!(t.insert(3, &LIMITS, |_| ()), Err(STATUS_QUOTA_EXCEEDED));
        assert_eq!((t.len(), t.owned_by(1), t.owned_by(2)), (3, 2, 1));
        t.remove(second, None).unwrap();
        t.insert(3, &LIMITS, |_| ()).unwrap();
        let mut ids = Vec::new();
        t.ids(Some(1), &mut ids).unwrap();
        assert_eq!(ids.len(), 1);
        ids.clear();
        t.ids(None, &mut ids).unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|&id| t.get(id).is_some()));
    }
}
