//! The console's files, compiled into the binary (no CDN, no build step, works offline), and the
//! headers every one of them is served with: a Content-Security-Policy that allows only this
//! origin's own script and style (no inline code, no frames, no forms posting elsewhere), no
//! framing, no referrer, no type sniffing and no caching, so a new binary's page is never mixed
//! with an old one's script.

use bytes::Bytes;
use http::{HeaderValue, Response, header};

/// The policy of every console answer; the page has no inline script or style attribute, so it
/// needs no `'unsafe-inline'` (images may be `data:` URIs, for the favicon).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One file: its bytes and its media type.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

const PAGE: Asset = Asset {
    body: include_bytes!("assets/index.html"),
    content_type: "text/html; charset=utf-8",
};
/// The script, as three ES modules (no build step joins them): the start, the views, and the
/// pieces both use.
const SCRIPT: Asset = Asset {
    body: include_bytes!("assets/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const VIEWS: Asset = Asset {
    body: include_bytes!("assets/views.js"),
    content_type: "text/javascript; charset=utf-8",
};
const LIB: Asset = Asset {
    body: include_bytes!("assets/lib.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_bytes!("assets/app.css"),
    content_type: "text/css; charset=utf-8",
};
const ICON: Asset = Asset {
    body: include_bytes!("assets/favicon.svg"),
    content_type: "image/svg+xml",
};

/// The file for a request path (`/console`, `/console/`, `/console/app.js`, ...), with its
/// headers; `None` for a path that is not one of the console's.
pub(crate) fn asset(path: &str) -> Option<Response<Bytes>> {
    let name = path.strip_prefix("/console")?;
    let asset = match name {
        "" | "/" | "/index.html" => &PAGE,
        "/app.js" => &SCRIPT,
        "/views.js" => &VIEWS,
        "/lib.js" => &LIB,
        "/app.css" => &STYLE,
        "/favicon.svg" => &ICON,
        _ => return None,
    };
    let mut resp = Response::new(Bytes::from_static(asset.body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_has_its_type_and_the_security_headers() {
        for (path, kind) in [
            ("/console", "text/html"),
            ("/console/", "text/html"),
            ("/console/app.js", "text/javascript"),
            ("/console/views.js", "text/javascript"),
            ("/console/lib.js", "text/javascript"),
            ("/console/app.css", "text/css"),
            ("/console/favicon.svg", "image/svg+xml"),
        ] {
            let resp = asset(path).unwrap_or_else(|| panic!("{path}"));
            let h = resp.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
            assert!(!resp.body().is_empty());
        }
    }

    #[test]
    fn other_paths_are_not_the_console() {
        for path in [
            "/consoles",
            "/console/../admin",
            "/console/app.js/",
            "/console/x",
            "/admin/console",
        ] {
            assert!(asset(path).is_none(), "{path}");
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(PAGE.body).unwrap();
        assert!(!page.contains("style="), "an inline style attribute");
        assert!(!page.contains("<style"), "an inline style element");
        // Every script element loads its file: none carries code of its own.
        for part in page.split("<script").skip(1) {
            let (tag, rest) = part.split_once('>').unwrap();
            assert!(tag.contains("src="), "an inline script: <script{tag}>");
            assert!(rest.trim_start().starts_with("</script>"));
        }
        for attr in [
            " onclick=",
            " onload=",
            " onerror=",
            " onsubmit=",
            "javascript:",
        ] {
            assert!(!page.contains(attr), "{attr}");
        }
        for asset in [&SCRIPT, &VIEWS, &LIB] {
            let script = std::str::from_utf8(asset.body).unwrap();
            assert!(
                !script.contains("innerHTML") && !script.contains("outerHTML"),
                "the script builds the DOM, never HTML text"
            );
            assert!(!script.contains("eval(") && !script.contains("new Function"));
        }
    }
}
