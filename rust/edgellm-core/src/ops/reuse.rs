//! Buffers a thread keeps from one call to the next, so that steady-state work
//! (a decode step: the same shapes every time) allocates nothing once warm. A
//! call takes its thread's buffers out of a thread-local slot and the guard puts
//! them back when dropped, unless told not to keep them (a long prompt's).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// A value taken out of a thread-local slot, returned to it on drop.
pub(crate) struct Reused<T: Default + 'static> {
    value: T,
    slot: &'static LocalKey<RefCell<T>>,
    keep: bool,
}

impl<T: Default + 'static> Reused<T> {
    /// Takes the slot's value (the default if a caller further up holds it).
    pub(crate) fn take(slot: &'static LocalKey<RefCell<T>>) -> Self {
        let value = slot.with(|s| s.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default());
        Reused { value, slot, keep: true }
    }

    /// Whether to put the value back when dropped (default: yes).
    pub(crate) fn keep_if(&mut self, keep: bool) {
        self.keep = keep;
    }
}

impl<T: Default + 'static> Drop for Reused<T> {
    fn drop(&mut self) {
        if self.keep {
            let value = std::mem::take(&mut self.value);
            // Not during thread teardown, nor over a value a caller holds.
            let _ = self.slot.try_with(|s| s.try_borrow_mut().map(|mut v| *v = value));
        }
    }
}

impl<T: Default + 'static> Deref for Reused<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Default + 'static> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: RefCell<Vec<u32>> = RefCell::default();
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
