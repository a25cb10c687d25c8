//! The README's "Testing your handlers" shows `smallest.rs` whole: this keeps the two the same.

#[test]
fn the_readme_shows_the_smallest_test_as_it_is() {
    let readme = include_str!("../../../README.md");
    let test = include_str!("smallest.rs");
    assert!(
        readme.contains(&format!("```rust\n{test}```")),
        "README.md, \"Testing your handlers\", must show examples/order-worker/tests/smallest.rs verbatim"
    );
}
