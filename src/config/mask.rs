//! Secrets in the effective settings: URLs that may carry a password, and digests, print masked
//! wherever settings are shown (`check-config`, `Debug`, logs).

/// `redis://user:pass@host` → `redis://user:***@host`; a lone user part (`http://TOKEN@proxy`,
/// which some proxies take as the credential) → `http://***@proxy`.
pub(crate) fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the authority's last `@`: a password may hold `@` itself.
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => {
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{shown}@{}", &rest[userinfo.len() + 1..])
        }
        None => url.to_string(),
    }
}

pub(super) fn mask_url_password<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

pub(super) fn mask_opt<S: serde::Serializer>(
    _: &Option<[u8; 32]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str("*** (set)")
}

pub(super) fn hex_digest<S: serde::Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_password_is_masked() {
        assert_eq!(mask_url("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask_url("http://tok@p:3128"), "http://***@p:3128");
        assert_eq!(mask_url("redis://u:a@b@h:1/x@y"), "redis://u:***@h:1/x@y");
    }
}
