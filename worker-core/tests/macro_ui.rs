//! Compile tests of `#[handler]`: what it accepts, and how it reports what it does not.
//!
//! Run with `TRYBUILD=overwrite` to regenerate the `.stderr` files after a toolchain or message
//! change, then read every one of them: each error must point at the offending token.

#[test]
fn handler_macro() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
