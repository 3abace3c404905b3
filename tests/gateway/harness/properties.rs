//! Settings for the property tests (proptest).

use proptest::test_runner::Config as ProptestConfig;

/// `cases` cases per property; a failure prints its minimal input, and nothing is written into
/// the source tree.
pub(crate) fn property_cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
