//! The synchronisation primitives the strategies are built of, and the one
//! lock the crate uses.
//!
//! - [`semaphore`]: the first-come, first-served semaphore of `Bounded` and
//!   `Exclusive` (and of `Remote`'s calls in flight);
//! - [`steer`]: wakes a thread given a permit on the core its releaser
//!   frees;
//! - [`gate`]: what lets `Pool` and `Processes` shut down while calls race
//!   to enter them;
//! - [`latch`]: how a `Pool`'s driving thread waits for its job;
//! - [`wrapper`]: `SyncWrapper`, which makes a panic payload `Sync` without
//!   a lock;
//! - [`loom`]: the shim that swaps the real primitives for loom's models
//!   under `--cfg loom` (`scripts/loom`), the one place that says which is
//!   which.
//!
//! # The mutex policy
//!
//! One lock everywhere: [`Mutex`], parking_lot's (no poisoning: a panic
//! while it is held leaves the data as it is, and every critical section
//! here keeps its data consistent at each step, so there is nothing to
//! recover), or loom's model of it under `--cfg loom`. (The stack pool,
//! `coroutine/stack/mod.rs`, keeps its lock in a `static`, where loom's
//! cannot be built, so it names parking_lot's directly: the same lock.)
//! Unlike std's, it does
//! not make its holder `RefUnwindSafe`: `Pool`, whose lock was std's, says
//! so by hand (`apply/pool.rs`), so that its auto traits did not change.

pub(crate) mod gate;
pub(crate) mod latch;
pub(crate) mod loom;
pub(crate) mod semaphore;
pub(crate) mod steer;
pub(crate) mod wrapper;

pub(crate) use self::loom::Mutex;
/// (Only `remote/` names a guard's type.)
#[cfg(feature = "remote")]
pub(crate) use self::loom::MutexGuard;
pub(crate) use self::wrapper::SyncWrapper;
