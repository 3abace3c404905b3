//! `NO_PROXY`: the upstreams that `HTTPS_PROXY` is not used for. The spellings curl documents
//! (CURLOPT_NOPROXY), plus the two other tools add, and nothing else:
//! - `*` alone: every host;
//! - a name, `example.com` or `.example.com`: that host and every host under it (not
//!   `notexample.com`); `*.example.com` is read the same way;
//! - an IP address (IPv6 with or without brackets) or a CIDR block (`10.0.0.0/8`, `fd00::/8`):
//!   an upstream written as an address in it (names are not resolved to be compared);
//! - a name or an address with `:port` (`example.com:8443`, `[::1]:8443`): that host on that port
//!   only (the scheme's port when the URL has none).
//!
//! Entries are separated by commas, spaces around them are ignored, letter case and a trailing dot
//! do not matter. Any other spelling (a `*` inside a name, an address range) is refused when the
//! configuration is read, naming the entry, rather than silently never matching.

use std::net::IpAddr;

#[derive(Debug, Default)]
pub(crate) struct NoProxy {
    all: bool,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    host: Host,
    port: Option<u16>,
}

#[derive(Debug)]
enum Host {
    /// Lower case, without a leading or trailing dot.
    Name(String),
    /// An address and how many of its leading bits must match.
    Net(IpAddr, u8),
}

impl NoProxy {
    pub(crate) fn parse(list: &str) -> Result<NoProxy, String> {
        let mut out = NoProxy::default();
        for raw in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if raw == "*" {
                out.all = true;
                continue;
            }
            let entry = entry(raw).ok_or_else(|| {
                format!(
                    "entry {raw:?} is not a spelling the gateway accepts: `*`, a name \
                     (example.com, .example.com, *.example.com), an IP address or CIDR block, \
                     each but `*` optionally with :port"
                )
            })?;
            out.entries.push(entry);
        }
        Ok(out)
    }

    /// Whether an upstream at `host` (as a URI writes it: IPv6 in brackets) and `port` goes direct.
    pub(crate) fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let addr = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|e| {
            e.port.is_none_or(|p| p == port)
                && match (&e.host, addr) {
                    (Host::Net(net, bits), Some(addr)) => in_net(addr, *net, *bits),
                    (Host::Name(name), None) => {
                        host == *name
                            || host
                                .strip_suffix(name.as_str())
                                .is_some_and(|rest| rest.ends_with('.'))
                    }
                    _ => false,
                }
        })
    }
}

/// One entry other than `*`; `None` when it is not an accepted spelling.
fn entry(raw: &str) -> Option<Entry> {
    // `[v6]` or `[v6]:port`; `host:port` has exactly one colon; a bare IPv6 address has several.
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        match after {
            "" => (inside, None),
            _ => (inside, Some(after.strip_prefix(':')?)),
        }
    } else if raw.matches(':').count() == 1 {
        let (h, p) = raw.split_once(':')?;
        (h, Some(p))
    } else {
        (raw, None)
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some(Entry {
        host: host_of(host)?,
        port,
    })
}

fn host_of(text: &str) -> Option<Host> {
    if let Some((addr, bits)) = text.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        return (bits <= width(addr)).then_some(Host::Net(addr, bits));
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(Host::Net(addr, width(addr)));
    }
    let name = text.strip_prefix("*.").unwrap_or(text);
    let name = name.strip_prefix('.').unwrap_or(name);
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        // No top-level domain is all digits: such a "name" is a mistyped address or a range.
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
    valid.then_some(Host::Name(name))
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn in_net(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, n) = match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n))),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n)),
        _ => return false,
    };
    let shift = u32::from(width(addr) - bits);
    a.checked_shr(shift).unwrap_or(0) == n.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::NoProxy;

    #[test]
    fn the_documented_spellings_match_what_they_say() {
        let np = NoProxy::parse(
            " example.com, .corp.internal,*.svc.local , 10.0.0.0/8, ::1, [fd00::5], \
             api.test:8443, 192.168.1.7:443, [::2]:8443, TRAIL.example.org. ",
        )
        .unwrap();
        let direct = [
            ("example.com", 443),
            ("www.EXAMPLE.com", 443),
            ("corp.internal", 443),
            ("a.b.corp.internal", 80),
            ("svc.local", 443),
            ("x.svc.local", 443),
            ("10.1.2.3", 443),
            ("[::1]", 443),
            ("[fd00::5]", 443),
            ("api.test", 8443),
            ("v1.api.test", 8443),
            ("192.168.1.7", 443),
            ("[::2]", 8443),
            ("trail.example.org", 443),
            ("example.com.", 443),
        ];
        for (host, port) in direct {
            assert!(np.matches(host, port), "{host}:{port} goes direct");
        }
        let proxied = [
            ("notexample.com", 443),
            ("example.com.org", 443),
            ("11.0.0.1", 443),
            ("[::3]", 443),
            ("api.test", 443),
            ("192.168.1.7", 8443),
            ("[::2]", 443),
            ("local", 443),
        ];
        for (host, port) in proxied {
            assert!(
                !np.matches(host, port),
                "{host}:{port} goes through the proxy"
            );
        }
        assert!(NoProxy::parse("*").unwrap().matches("any.where", 1));
        assert!(NoProxy::parse("").unwrap().entries.is_empty());
    }

    #[test]
    fn other_spellings_are_refused_naming_the_entry() {
        for bad in [
            "ex*ample.com",
            "*example.com",
            "10.0.0.1-10.0.0.9",
            "10.0.0.0/33",
            "host:0",
            "host:http",
            "[::1",
            "a b",
        ] {
            let e = NoProxy::parse(&format!("ok.example, {bad}")).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
