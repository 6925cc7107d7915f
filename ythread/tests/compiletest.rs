//! Compile-time contract of the macros: misuse is a compile error that points
//! at the user's tokens and says what to do; correct use compiles without
//! warnings. The cases are in `tests/ui/pass/` and `tests/ui/fail/`, the
//! expected messages in the `.stderr` files beside the failing ones;
//! regenerate them with
//! `TRYBUILD=overwrite cargo test -p ythread --all-features --test compiletest`
//! and read the diff (rustc's messages depend on the crates in the build, so
//! this target needs every feature: see `Cargo.toml`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
