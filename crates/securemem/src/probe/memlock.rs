//! P1 under a tight limit: a holder without `CAP_IPC_LOCK` and with a small `RLIMIT_MEMLOCK`
//! creates secrets until the limit is reached. `MlockPolicy::Required` must then fail with the
//! library's clear error naming the limit; `MlockPolicy::BestEffort` must go on and report the
//! secrets past the limit as not locked — never silently pretend. Secret memory
//! (`Backing::SecretMem`) is charged to the limit whatever the policy, so there both policies
//! must fail with that error.
//!
//! Sealed secrets (`Strategy::Sealed`) lock no memory of their own: their bytes are heap
//! ciphertext, and the pages locked are the key's and the thread's scratch area, shared by all
//! of them ([`SEALED_PAGES`]). There, as many secrets as one-page ones would exceed the limit
//! must all be created and reported locked, and under a limit below those pages the first one
//! must be refused with the error naming the limit (or, with best effort, reported unlocked).

use super::{Finding, ProbeError};
use crate::holder::{BackingArg, MlockArg, StrategyArg};
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
    if options.policy.strategy == StrategyArg::Sealed {
        return sealed_limit(options, mlock, limit, page);
    }
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
    set_up(&lines)?;
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

/// Fails when the holder could not even set up the limit (an error before its first secret).
fn set_up(lines: &[String]) -> Result<(), ProbeError> {
    match lines.first() {
        Some(first)
            if first.starts_with("error ")
                && lines.len() == 1
                && !first.starts_with("error 0 ") =>
        {
            Err(ProbeError::Skipped(format!(
                "the holder could not set up the limit: {first}"
            )))
        }
        _ => Ok(()),
    }
}

/// The pages sealed secrets lock, however many there are: the key's page and the thread's
/// scratch area.
pub const SEALED_PAGES: u64 = 2;

/// The limit probe for sealed secrets (see the module's documentation).
fn sealed_limit(
    options: &HolderOptions,
    mlock: MlockArg,
    limit: u64,
    page: u64,
) -> Result<Finding, ProbeError> {
    let options = options.clone().with_mlock(mlock);
    let needed = SEALED_PAGES * page;
    let count = usize::try_from(limit / page).unwrap_or(0) + 1;
    let mut finding = Finding::new(
        "P1",
        format!(
            "{} under RLIMIT_MEMLOCK = {limit} bytes without CAP_IPC_LOCK (sealed secrets)",
            mlock.name()
        ),
        None,
    );
    if limit < needed {
        let lines = run_fill(&options, limit, 1)?;
        set_up(&lines)?;
        refused_below_the_pages(&lines, limit, mlock, &mut finding);
        return Ok(finding);
    }
    let lines = run_fill(&options, limit, count)?;
    set_up(&lines)?;
    let created: Vec<&String> = lines.iter().filter(|l| l.starts_with("created ")).collect();
    note_got(&created, &mut finding);
    let unlocked = created
        .iter()
        .filter(|l| !l.contains("locked=true"))
        .count();
    match lines.iter().find(|l| l.starts_with("error ")) {
        Some(e) => finding.broke(format!(
            "refused after {} sealed secrets, although the limit holds the key's page and a \
             scratch area ({needed} bytes): {e}",
            created.len()
        )),
        None if created.len() != count => {
            finding.broke(format!("only {} of {count} secrets created", created.len()));
        }
        None if unlocked > 0 => finding.broke(format!(
            "{unlocked} of {count} sealed secrets report locked=false, although their key's page \
             and scratch area fit the limit"
        )),
        None => finding.saw(format!(
            "{count} sealed secrets created and reported locked, more than {} one-page secrets \
             would fit: they share the key's page and the thread's scratch area ({needed} bytes)",
            count - 1
        )),
    }
    let tight = needed - page;
    let lines = run_fill(&options, tight, 1)?;
    refused_below_the_pages(&lines, tight, mlock, &mut finding);
    Ok(finding)
}

/// Records the backing and strategy the first secret got.
fn note_got(created: &[&String], finding: &mut Finding) {
    let first = |key: &str| {
        created.first().and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        })
    };
    finding.backing = first("backing").unwrap_or_default();
    finding.strategy = first("strategy").unwrap_or_default();
}

/// Under a limit below the key's page and a scratch area, the first sealed secret cannot have
/// its key and plaintext locked: it must be refused with the error naming the limit, or, with
/// best effort, be reported unlocked.
fn refused_below_the_pages(lines: &[String], limit: u64, mlock: MlockArg, finding: &mut Finding) {
    let created: Vec<&String> = lines.iter().filter(|l| l.starts_with("created ")).collect();
    if finding.strategy.is_empty() {
        note_got(&created, finding);
    }
    let under = format!(
        "under RLIMIT_MEMLOCK = {limit} bytes, less than the key's page and a scratch area,"
    );
    match (
        lines.iter().find(|l| l.starts_with("error ")),
        created.first(),
    ) {
        (Some(e), None) => {
            let message = e.splitn(3, ' ').nth(2).unwrap_or("");
            if message.contains("RLIMIT_MEMLOCK") && message.contains(&limit.to_string()) {
                finding.saw(format!(
                    "{under} the first sealed secret is refused: {message}"
                ));
            } else {
                finding.broke(format!(
                    "{under} the error does not name RLIMIT_MEMLOCK and its value {limit}: {message}"
                ));
            }
        }
        (_, Some(c)) if c.contains("locked=true") => finding.broke(format!(
            "{under} a sealed secret was created and reported locked=true: {c}"
        )),
        (_, Some(c)) if mlock == MlockArg::BestEffort => finding.saw(format!(
            "{under} the first sealed secret was created and reported unlocked: {c}"
        )),
        (_, Some(c)) => finding.broke(format!(
            "{under} MlockPolicy::Required created a sealed secret that is not locked: {c}"
        )),
        (None, None) => finding.broke(format!(
            "{under} the holder created nothing and said nothing"
        )),
    }
}
