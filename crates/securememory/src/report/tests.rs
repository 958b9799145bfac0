//! What `OnCorruption::Abort` does up to the abort, checked in-process: the abort unwinds here
//! instead (`UNWIND_INSTEAD_OF_ABORT`), so the secret can be looked at afterwards. That the real
//! abort ends the process is checked in `tests/process.rs`.

use super::*;
use crate::{ProtectedMemorySecretFactory, Strategy};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn overwrite_canary(bytes: &mut [u8]) {
    // SAFETY: the byte right before the secret is in its (writable) data page: the canary,
    // overwritten on purpose.
    unsafe { *bytes.as_mut_ptr().sub(1) ^= 0xff };
}

fn aborted<R>(call: impl FnOnce() -> R) -> bool {
    UNWIND_INSTEAD_OF_ABORT.with(|unwind| unwind.set(true));
    let result = catch_unwind(AssertUnwindSafe(call));
    UNWIND_INSTEAD_OF_ABORT.with(|unwind| unwind.set(false));
    matches!(result, Err(payload) if payload.is::<Aborted>())
}

#[test]
fn abort_on_corruption_wipes_the_secret_first() {
    for strategy in [Strategy::Auto, Strategy::PageProtection] {
        let factory = ProtectedMemorySecretFactory::builder()
            .strategy(strategy)
            .on_corruption(OnCorruption::Abort)
            .build();
        let secret = factory.new(&mut [0xab; 32]).unwrap();
        assert!(secret.protection().canary);
        assert!(
            aborted(|| secret.with_bytes_mut(overwrite_canary)),
            "{strategy:?}: with_bytes_mut did not abort"
        );
        assert!(
            secret.with_bytes(|b| b == [0; 32]).unwrap(),
            "{strategy:?}: the bytes were not wiped before the abort"
        );
        assert!(
            aborted(|| secret.close()),
            "{strategy:?}: close did not abort"
        );
        assert!(secret.is_closed());
    }
}

#[test]
fn without_abort_a_corrupted_canary_is_an_error_and_the_bytes_stay() {
    let factory = ProtectedMemorySecretFactory::builder()
        .report(Report::Silent)
        .build();
    let secret = factory.new(&mut [0xab; 32]).unwrap();
    let corrupted = secret.with_bytes_mut(overwrite_canary);
    assert!(matches!(corrupted, Err(Error::Corrupted)), "{corrupted:?}");
    assert!(secret.with_bytes(|b| b == [0xab; 32]).unwrap());
    assert!(matches!(secret.close(), Err(Error::Corrupted)));
}

/// What a builder chose for reports shows in its `Debug`: a callback as a placeholder (it has no
/// `Debug` of its own), the rest as they are.
#[test]
fn report_choices_show_what_was_chosen() {
    let mut choices = ReportChoices {
        report: Report::Silent,
        on_degraded: None,
        on_corruption: OnCorruption::Abort,
    };
    assert_eq!(
        format!("{choices:?}"),
        "ReportChoices { report: Silent, on_degraded: None, on_corruption: Abort }"
    );
    choices.on_degraded = Some(Arc::new(|_| ()));
    assert!(
        format!("{choices:?}").contains("on_degraded: Some(\"<callback>\")"),
        "{choices:?}"
    );
}
