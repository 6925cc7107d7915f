//! Compile-time contract of the macros: misuse is a compile error that points
//! at the user's tokens and says what to do; correct use compiles without
//! warnings. The expected messages are the `.stderr` files in `tests/ui/`;
//! regenerate them with `TRYBUILD=overwrite cargo test --test compiletest`
//! and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    // Every other case must fail: the pattern is "not starting with `p`", so
    // a failing case is never named `p...` (`offload_...`, `yieldable_...`,
    // `yield_from_...`, `unused_...`).
    t.compile_fail("tests/ui/[!p]*.rs");
}
