//! Authority cannot be forged in code: outside the kernel, an `Access` or a
//! `Caller` is made only by verifying a token (or by the kernel's own
//! `Privacy::internal_access`). A struct literal, a constructor that does
//! not exist, and a write to a field after the fact each fail to compile.

#[test]
fn code_outside_the_kernel_cannot_make_or_widen_an_access() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/authority/*.rs");
}
