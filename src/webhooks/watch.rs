//! `token.failing`: watches each account's token broker and tells a receiver once an account has
//! been without a token for its `token_failing_after`; once more after the account held a token
//! again and lost it again. Each replica watches its own brokers.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Event, Notifier};
use crate::clock::now_ms;
use crate::config::EventKind;
use crate::upstream::AccountHandle;
use crate::upstream::token::TokenStatus;

/// How often the brokers are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// One account's watch: since when it has had no token, and which receivers were told.
struct Watch {
    account: Arc<AccountHandle>,
    since_ms: Option<u64>,
    told: Vec<bool>,
}

/// Watches `accounts` until `stop`; returns at once when no receiver wants `token.failing`.
pub(crate) async fn tokens(
    notifier: Notifier,
    accounts: Vec<Arc<AccountHandle>>,
    stop: CancellationToken,
) {
    let Some(inner) = notifier.0.clone() else {
        return;
    };
    if !inner.hooks.iter().any(|h| h.wants(EventKind::TokenFailing)) {
        return;
    }
    let mut watches: Vec<Watch> = accounts
        .into_iter()
        .map(|account| Watch {
            account,
            since_ms: None,
            told: vec![false; inner.hooks.len()],
        })
        .collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let now = now_ms();
        for w in &mut watches {
            let without = matches!(
                w.account.broker.status(),
                TokenStatus::Failing(_) | TokenStatus::None
            );
            if !without {
                w.since_ms = None;
                w.told.fill(false);
                continue;
            }
            let since = *w.since_ms.get_or_insert(now);
            for (i, hook) in inner.hooks.iter().enumerate() {
                let due = now.saturating_sub(since) >= hook.token_failing_after.as_millis() as u64;
                if due && !w.told[i] && hook.wants(EventKind::TokenFailing) {
                    w.told[i] = true;
                    notifier.send_to(Event::token_failing(&w.account.name, since), &hook.url);
                }
            }
        }
    }
}
