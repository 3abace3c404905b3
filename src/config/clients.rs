//! `[[clients]]`: the callers with a key (its SHA-256 digest only), the account each calls as, the
//! routes each may use, whether it may lease the account's token, and its own spending caps.

use std::collections::BTreeSet;

use crate::protect::budget::settings::ClientBudget;
use serde::{Deserialize, Serialize};

use super::accounts::{Account, default_account_name};
use super::check::{check_name, parse_digest, route_set};
use super::error::{ConfigError, invalid};
use super::mask::hex_digest;
use crate::routes::{Route, RouteTable};

/// The name anonymous calls carry in the access log (and that no client may take).
pub(crate) const ANONYMOUS: &str = "anonymous";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub name: String,
    pub key_sha256: String,
    #[serde(default = "default_account_name")]
    pub account: String,
    /// Route names this client may call (`disk.info`, ...); absent = every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// May lease the account's upstream token at `GET /_gateway/token`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_lease: bool,
    /// This client's own caps (`budget = { creates_per_day = 5 }`), in place of
    /// `[create.budget.client]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<ClientBudget>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Client {
    pub(crate) name: String,
    #[serde(serialize_with = "hex_digest")]
    pub(crate) key_sha256: [u8; 32],
    pub(crate) account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routes: Option<BTreeSet<Route>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) token_lease: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) budget: Option<ClientBudget>,
}

/// `[[clients]]` as clients: names and keys unique, each naming a known account and known routes.
pub(super) fn resolve(
    list: &[ClientConfig],
    accounts: &[Account],
    table: &RouteTable,
) -> Result<Vec<Client>, ConfigError> {
    let mut clients: Vec<Client> = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let key = format!("clients[{i}]");
        check_name(format!("{key}.name"), &c.name)?;
        // Callers without a key go by this name: records, budgets and logs would mix.
        if c.name == ANONYMOUS {
            return Err(invalid(
                format!("{key}.name"),
                "\"anonymous\" names the callers without a key; choose another name",
            ));
        }
        if clients.iter().any(|d| d.name == c.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("client {:?} is defined twice", c.name),
            ));
        }
        let digest = parse_digest(&format!("{key}.key_sha256"), &c.key_sha256)?;
        if clients.iter().any(|d| d.key_sha256 == digest) {
            return Err(invalid(
                format!("{key}.key_sha256"),
                "two clients share one key",
            ));
        }
        if !accounts.iter().any(|a| a.name == c.account) {
            let known: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
            return Err(invalid(
                format!("{key}.account"),
                format!("unknown account {:?}; expected one of {known:?}", c.account),
            ));
        }
        let routes = match &c.routes {
            None => None,
            Some(names) => Some(route_set(table, &format!("{key}.routes"), names)?),
        };
        clients.push(Client {
            name: c.name.clone(),
            key_sha256: digest,
            account: c.account.clone(),
            routes,
            token_lease: c.token_lease,
            budget: c.budget,
        });
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve;

    #[test]
    fn unknown_route_in_allow_list() {
        let text = format!(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"{}\"\nroutes = [\"disk.nope\"]\n",
            "0".repeat(64)
        );
        let e = resolve(&text).unwrap_err().to_string();
        assert!(
            e.contains("clients[0].routes") && e.contains("disk.nope"),
            "{e}"
        );
    }

    #[test]
    fn a_client_budget_applies_to_that_client_alone() {
        let client = |name: &str, digit: &str, budget: &str| {
            format!(
                "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{budget}",
                digit.repeat(64)
            )
        };
        let text = format!(
            "[create.budget.client]\ncreates_per_day = 10\ngb_per_day = 100\n{}{}",
            client(
                "a",
                "0",
                "budget = { creates_per_day = 5, gb_per_month = 900 }\n"
            ),
            client("b", "1", "")
        );
        let s = resolve(&text).unwrap();
        let a = s.create.budget.client_caps("a");
        assert_eq!(
            (a.creates_per_day, a.gb_per_day, a.gb_per_month),
            (5, 100, 900)
        );
        assert_eq!(s.create.budget.client_caps("b"), s.create.budget.client);
        assert!(
            s.to_masked_toml().contains("budget"),
            "check-config shows it"
        );
        let e = resolve(&client("a", "0", "budget = { creates_per_week = 1 }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("creates_per_week"), "{e}");
    }
}
