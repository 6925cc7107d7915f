//! [`SyncWrapper`]: makes a value that is `Send` but not `Sync` (a panic
//! payload) `Sync`, by giving no access to it through a shared reference.
//! The pattern of tokio's `util/sync_wrapper.rs` (the `sync_wrapper` crate
//! has the same type).

/// A `Send` value, held so that the holder is `Sync` too: the value is only
/// reached by its owner, by value, never through a `&SyncWrapper`.
pub(crate) struct SyncWrapper<T> {
    /// Reached only through `into_inner`, which takes `self`.
    value: T,
}

impl<T> SyncWrapper<T> {
    pub(crate) fn new(value: T) -> Self {
        SyncWrapper { value }
    }

    pub(crate) fn into_inner(self) -> T {
        self.value
    }
}

// SAFETY: `Sync` lets threads share a `&SyncWrapper<T>`, and nothing can be
// done with one: no method takes `&self` and the field is private, so no
// thread ever reaches the value through a shared reference. (`Send` follows
// from `T: Send` by itself.)
unsafe impl<T> Sync for SyncWrapper<T> {}
