//! Compatibility tests of cfs against composefs-rs 0.9.4, which is used here only as a test
//! oracle (a dev-dependency of this unpublished crate, never a dependency of the product): image
//! ids computed for the same directory must agree, and repositories written by either tool must
//! open, check and mount with the other. The tests live in `tests/`.
