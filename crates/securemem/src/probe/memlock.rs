//! P1 under a tight limit: a holder without `CAP_IPC_LOCK` and with a small `RLIMIT_MEMLOCK`
//! creates secrets until the limit is reached. `MlockPolicy::Required` must then fail with the
//! library's clear error naming the limit; `MlockPolicy::BestEffort` must go on and report the
//! secrets past the limit as not locked — never silently pretend. Secret memory
//! (`Backing::SecretMem`) is charged to the limit whatever the policy, so there both policies
//! must fail with that error.

use super::{Finding, ProbeError};
use crate::holder::{BackingArg, MlockArg};
use crate::spawn::{run_fill, HolderOptions};

/// The locked-memory limit the probe imposes: 64 KiB, the historical default of many
/// distributions.
pub const LIMIT: u64 = 64 * 1024;

/// Runs the limit probe for `mlock`, under [`LIMIT`] or the holders' own limit where that is
/// lower (`options.memlock`, else the caller's hard limit).
///
/// # Errors
/// [`ProbeError::Skipped`] when the holder cannot drop `CAP_IPC_LOCK` or lower the limit, or
/// for `MlockPolicy::Disabled`, which locks nothing that a limit could refuse.
pub fn limit(options: &HolderOptions, mlock: MlockArg) -> Result<Finding, ProbeError> {
    if mlock == MlockArg::Disabled {
        return Err(ProbeError::Skipped(
            "MlockPolicy::Disabled locks nothing, so a locked-memory limit has nothing to refuse"
                .into(),
        ));
    }
    let page = crate::sys::page_size() as u64;
    let hard = match options.memlock {
        Some(given) => given.bytes(),
        None => crate::sys::get_rlimit(libc::RLIMIT_MEMLOCK).1,
    };
    let limit = hard.map_or(LIMIT, |h| h.min(LIMIT)) / page * page;
    // Secret memory is charged to the limit whatever the policy, so best effort has no way
    // past it there.
    let refusal_expected =
        mlock == MlockArg::Required || options.policy.backing == BackingArg::Secretmem;
    let fits = usize::try_from(limit / page).unwrap_or(0);
    let count = fits + 1;
    let lines = run_fill(&options.clone().with_mlock(mlock), limit, count)?;
    let mut finding = Finding::new(
        "P1",
        format!(
            "{} under RLIMIT_MEMLOCK = {limit} bytes without CAP_IPC_LOCK ({count} secrets of one page)",
            mlock.name()
        ),
        None,
    );
    if let Some(first) = lines.first() {
        if first.starts_with("error ") && lines.len() == 1 && !first.starts_with("error 0 ") {
            return Err(ProbeError::Skipped(format!(
                "the holder could not set up the limit: {first}"
            )));
        }
    }
    let created: Vec<&String> = lines.iter().filter(|l| l.starts_with("created ")).collect();
    let locked = created.iter().filter(|l| l.contains("locked=true")).count();
    let unlocked = created.len() - locked;
    let first = |key: &str| {
        created.first().and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        })
    };
    finding.backing = first("backing").unwrap_or_default();
    finding.strategy = first("strategy").unwrap_or_default();
    let error = lines.iter().find(|l| l.starts_with("error "));
    finding.saw(format!(
        "{} secrets created ({locked} locked, {unlocked} not locked)",
        created.len()
    ));
    if refusal_expected {
        match error {
            Some(e) => {
                let message = e.splitn(3, ' ').nth(2).unwrap_or("");
                let names_limit =
                    message.contains("RLIMIT_MEMLOCK") && message.contains(&limit.to_string());
                if names_limit && created.len() == fits && unlocked == 0 {
                    finding.saw(format!("secret {} refused: {message}", created.len() + 1));
                } else if !names_limit {
                    finding.broke(format!(
                        "the error does not name RLIMIT_MEMLOCK and its value {limit}: {message}"
                    ));
                } else {
                    finding.broke(format!(
                        "refused after {} secrets ({unlocked} unlocked), expected after {fits}: {message}",
                        created.len()
                    ));
                }
            }
            None => finding.broke(format!(
                "all {} secrets were created past the limit ({unlocked} unlocked) without an error",
                created.len()
            )),
        }
    } else if let Some(e) = error {
        finding.broke(format!("best effort still failed: {e}"));
    } else if created.len() != count {
        finding.broke(format!("only {} of {count} secrets created", created.len()));
    } else if unlocked == 0 {
        finding.broke("every secret reports locked=true although the limit cannot hold them all");
    } else if created.last().is_some_and(|l| l.contains("locked=false")) {
        finding.saw(format!(
            "secret {count} (past the limit) created and reported locked=false"
        ));
    } else {
        finding.broke("the secret past the limit is not the one reported unlocked");
    }
    Ok(finding)
}
