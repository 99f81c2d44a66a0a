//! Buffers a thread keeps from one call to the next, so that steady-state work
//! (a decode step: the same shapes every time) allocates nothing once warm. A
//! call takes its thread's buffers out of a thread-local slot and the guard puts
//! them back when dropped, unless told not to keep them (a long prompt's).
//!
//! A slot holds a box, so each costs the thread-local block only a pointer:
//! the extension's TLS is static (mimalloc's initial-exec variables), carved
//! from glibc's small surplus for libraries loaded later, and libraries loaded
//! after edgellm (libgomp under llama.cpp) need what is left of it.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// A thread-local slot of reusable buffers.
pub(crate) type Slot<T> = RefCell<Option<Box<T>>>;

/// A value taken out of a thread-local slot, returned to it on drop.
pub(crate) struct Reused<T: Default + 'static> {
    value: Option<Box<T>>,
    slot: &'static LocalKey<Slot<T>>,
    keep: bool,
}

impl<T: Default + 'static> Reused<T> {
    /// Takes the slot's value (a new default one the first time, or if a caller
    /// further up holds it).
    pub(crate) fn take(slot: &'static LocalKey<Slot<T>>) -> Self {
        let value = slot.with(|s| s.try_borrow_mut().ok().and_then(|mut v| v.take())).unwrap_or_default();
        Reused { value: Some(value), slot, keep: true }
    }

    /// Whether to put the value back when dropped (default: yes).
    pub(crate) fn keep_if(&mut self, keep: bool) {
        self.keep = keep;
    }
}

/// Capacity for `n` values in `v` (which keeps its contents): buffers sized
/// ahead of their first use, so that the step that first uses them does not
/// allocate.
pub(crate) fn reserve_for<T>(v: &mut Vec<T>, n: usize) {
    v.reserve(n.saturating_sub(v.len()));
}

impl<T: Default + 'static> Drop for Reused<T> {
    fn drop(&mut self) {
        if self.keep {
            let value = self.value.take();
            // Not during thread teardown, nor over a value a caller holds.
            let _ = self.slot.try_with(|s| s.try_borrow_mut().map(|mut v| *v = value));
        }
    }
}

impl<T: Default + 'static> Deref for Reused<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_deref().expect("held until dropped")
    }
}

impl<T: Default + 'static> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_deref_mut().expect("held until dropped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: Slot<Vec<u32>> = const { RefCell::new(None) };
    }

    #[test]
    fn buffers_come_back_unless_discarded() {
        {
            let mut v = Reused::take(&SLOT);
            v.extend([1, 2, 3]);
        }
        let cap = {
            let v = Reused::take(&SLOT);
            assert_eq!(*v, [1, 2, 3], "the buffer of the previous call");
            v.capacity()
        };
        assert!(cap >= 3);
        {
            let mut v = Reused::take(&SLOT);
            v.keep_if(false);
        }
        assert!(Reused::take(&SLOT).is_empty(), "a discarded buffer is not returned");
        // Another thread has its own.
        std::thread::spawn(|| assert!(Reused::take(&SLOT).is_empty())).join().unwrap();
    }
}
