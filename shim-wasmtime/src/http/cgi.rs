//! CGI/1.1 as WAGI uses it (RFC 3875; Deis Labs' WAGI): the variables a
//! request becomes, and the response a program's output is.
//!
//! In: `REQUEST_METHOD`, `PATH_INFO` (the decoded path: one module serves
//! every path, so `SCRIPT_NAME` is empty), `QUERY_STRING`, `SERVER_NAME`,
//! `SERVER_PORT`, `SERVER_PROTOCOL`, `REMOTE_ADDR`, `CONTENT_TYPE`,
//! `CONTENT_LENGTH`, ..., and each request header as `HTTP_<NAME>` (upper
//! case, `-` to `_`, repeated headers joined with `, `). A `Proxy` header
//! is dropped, never `HTTP_PROXY` (httpoxy), as are headers whose names
//! would not make a plain variable name.
//!
//! Out: header lines up to the first blank line (LF or CRLF), then the
//! body. `status:` sets the code; `location:` without a status redirects
//! (302); repeated headers are kept; without `content-type` none is set.
//! Framing and connection headers (`content-length`, `transfer-encoding`,
//! `connection`, ...) are the server's and are dropped.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// Headers about the connection and the message's framing, which the
/// server sets: a program's own are dropped.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Why a request cannot be made CGI variables.
#[derive(Debug)]
pub struct BadPath;

/// The CGI variables for a request. `local` is where the request arrived.
pub fn variables(
    head: &http::request::Parts,
    content_length: Option<u64>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Result<Vec<(String, String)>, BadPath> {
    let uri = &head.uri;
    let path = uri.path();
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    // A NUL would silently cut the variable short for the program.
    if decoded.contains('\0') {
        return Err(BadPath);
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string())
        .unwrap_or_else(|| local.ip().to_string());
    let header = |name: http::header::HeaderName| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut vars = vec![
        ("AUTH_TYPE".into(), String::new()),
        (
            "CONTENT_LENGTH".into(),
            content_length.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("CONTENT_TYPE".into(), header(http::header::CONTENT_TYPE)),
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("PATH_INFO".into(), decoded.clone()),
        ("PATH_TRANSLATED".into(), decoded),
        ("QUERY_STRING".into(), uri.query().unwrap_or("").to_string()),
        ("REMOTE_ADDR".into(), remote.ip().to_canonical().to_string()),
        ("REMOTE_HOST".into(), remote.ip().to_canonical().to_string()),
        ("REMOTE_USER".into(), String::new()),
        ("REQUEST_METHOD".into(), head.method.to_string()),
        ("SCRIPT_NAME".into(), String::new()),
        ("SERVER_NAME".into(), host),
        ("SERVER_PORT".into(), local.port().to_string()),
        ("SERVER_PROTOCOL".into(), format!("{:?}", head.version)),
        (
            "SERVER_SOFTWARE".into(),
            concat!("containerd-shim-wasmtime/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("X_RAW_PATH_INFO".into(), path.to_string()),
    ];
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in head.headers.keys() {
        if name == http::header::CONTENT_TYPE
            || name == http::header::CONTENT_LENGTH
            || name.as_str() == "proxy"
            // `X_User` would pose as `X-User` (both HTTP_X_USER), which a
            // front proxy may strip: such names are dropped, as Apache and
            // nginx do.
            || !name
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            continue;
        }
        let values: Vec<&str> = head
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let var = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        let separator = if name == http::header::COOKIE {
            "; "
        } else {
            ", "
        };
        headers.push((var, values.join(separator)));
    }
    vars.extend(headers);
    Ok(vars)
}

/// The response a CGI program's output makes.
pub fn response(output: Bytes) -> Result<http::Response<Bytes>> {
    let (head, body) = split_head(&output).context(
        "the program's output has no header block: CGI output starts with headers \
         (at least content-type), then a blank line, then the body",
    )?;
    let head = std::str::from_utf8(&output[..head]).context("the header block is not UTF-8")?;
    let mut response = http::Response::new(output.slice(body..));
    let mut status = None;
    let mut location = false;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        let Some((name, value)) = line.split_once(':') else {
            bail!("header line {line:?} has no `:`");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .filter(|c| (200..600).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .with_context(|| format!("status {value:?} is not an HTTP status code"))?,
            );
            continue;
        }
        if name.eq_ignore_ascii_case("location") {
            location = true;
        }
        // The shim frames the response itself: a program's length or
        // connection headers would desynchronise the connection.
        if FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f)) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("header {name} has a value that cannot be sent"))?;
        response.headers_mut().append(name, value);
    }
    *response.status_mut() = match (status, location) {
        (Some(status), _) => status,
        (None, true) => StatusCode::FOUND,
        (None, false) => StatusCode::OK,
    };
    Ok(response)
}

/// Where the head ends and the body begins: at the first blank line, LF
/// or CRLF.
fn split_head(output: &[u8]) -> Option<(usize, usize)> {
    let mut start = 0;
    while start < output.len() {
        let end = output[start..].iter().position(|b| *b == b'\n')? + start;
        let line = &output[start..end];
        if line.is_empty() || line == b"\r" {
            return Some((start, end + 1));
        }
        start = end + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_request_becomes_cgi_variables() {
        let head = request(
            "/a%20b/c?x=1&y=2",
            &[
                ("host", "example.test:8080"),
                ("content-type", "text/plain"),
                ("x-thing", "one"),
                ("x-thing", "two"),
                ("proxy", "http://evil:1"),
                ("x_thing", "spoofed"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
        );
        let vars = variables(
            &head,
            Some(5),
            "10.0.0.9:5555".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(get(&vars, "PATH_INFO"), Some("/a b/c"));
        assert_eq!(get(&vars, "X_RAW_PATH_INFO"), Some("/a%20b/c"));
        assert_eq!(get(&vars, "QUERY_STRING"), Some("x=1&y=2"));
        assert_eq!(get(&vars, "REQUEST_METHOD"), Some("POST"));
        assert_eq!(get(&vars, "SERVER_NAME"), Some("example.test"));
        assert_eq!(get(&vars, "SERVER_PORT"), Some("8080"));
        assert_eq!(get(&vars, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
        assert_eq!(get(&vars, "REMOTE_ADDR"), Some("10.0.0.9"));
        assert_eq!(get(&vars, "CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get(&vars, "CONTENT_LENGTH"), Some("5"));
        assert_eq!(get(&vars, "SCRIPT_NAME"), Some(""));
        assert_eq!(get(&vars, "HTTP_X_THING"), Some("one, two"));
        assert_eq!(vars.iter().filter(|(n, _)| n == "HTTP_X_THING").count(), 1);
        assert_eq!(get(&vars, "HTTP_COOKIE"), Some("a=1; b=2"));
        assert_eq!(get(&vars, "HTTP_HOST"), Some("example.test:8080"));
        assert_eq!(get(&vars, "HTTP_PROXY"), None);
        assert_eq!(get(&vars, "HTTP_CONTENT_TYPE"), None);
    }

    #[test]
    fn a_nul_in_the_path_is_refused() {
        let head = request("/a%00b", &[]);
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(variables(&head, Some(0), addr, addr).is_err());
    }

    #[test]
    fn framing_headers_are_the_servers() {
        let r = response(Bytes::from_static(b"content-length: 1\nconnection: close\ntransfer-encoding: chunked\nx-a: 1\n\nlonger body")).unwrap();
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers().get("connection").is_none());
        assert!(r.headers().get("transfer-encoding").is_none());
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.body().as_ref(), b"longer body");
    }

    #[test]
    fn output_becomes_a_response() {
        let r = response(Bytes::from_static(
            b"content-type: text/plain\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\nhello\n",
        ))
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(r.body().as_ref(), b"hello\n");

        let r = response(Bytes::from_static(
            b"Status: 404 Not Found\ncontent-type: text/plain\n\ngone",
        ))
        .unwrap();
        assert_eq!(r.status(), 404);
        let r = response(Bytes::from_static(b"location: /elsewhere\n\n")).unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], "/elsewhere");
        let r = response(Bytes::from_static(b"status: 301\nlocation: /x\n\n")).unwrap();
        assert_eq!(r.status(), 301);
    }

    #[test]
    fn output_without_a_header_block_is_refused() {
        for bad in [
            &b"just a body, no headers"[..],
            b"hello world\n\nbody",
            b"status: 999\n\n",
            b"status: 101\n\n",
            b"",
        ] {
            assert!(
                response(Bytes::from_static(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
