//! A minimal HTTP/1.1 server for three paths: one `GET` (or `HEAD`) per connection, answered
//! with `Connection: close`. Enough for Prometheus and the kubelet's probes, and nothing more.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::state::Agent;

/// The longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `text/plain` or the exposition format's content type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Serves connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = Arc::clone(&agent);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &agent).await {
                        tracing::debug!("http connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("http accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, agent: &Agent) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (response, head_only) = match head {
        None => (Response::text(431, "request head too large\n"), false),
        Some(head) => match parse(&head) {
            Err(response) => (response, false),
            Ok((method, path)) => (route(agent, path).await, method == "HEAD"),
        },
    };
    stream.write_all(&encode(&response, head_only)).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the request head; `None` when it is too long.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Some(head));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The method and path of a request head, or the error answer.
fn parse(head: &[u8]) -> Result<(&str, &str), Response> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .map_err(|_| Response::text(400, "request line is not UTF-8\n"))?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "malformed request line\n"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::text(505, "only HTTP/1.x is served\n"));
    }
    if method != "GET" && method != "HEAD" {
        return Err(Response::text(405, "only GET and HEAD are served\n"));
    }
    // The query string, if any, is ignored.
    let path = target.split('?').next().unwrap_or(target);
    Ok((method, path))
}

async fn route(agent: &Agent, path: &str) -> Response {
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match agent.not_ready() {
            None => Response::text(200, "ready\n"),
            Some(reason) => Response::text(503, format!("{reason}\n")),
        },
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: agent.metrics().await,
        },
        _ => Response::text(404, "not found: the paths are /metrics, /healthz and /readyz\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let Response {
        status,
        content_type,
        body,
    } = response;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(*status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_head_and_ignores_the_query() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(("GET", "/metrics"))
        );
        assert_eq!(
            parse(b"HEAD /readyz?x=1 HTTP/1.0\r\n\r\n"),
            Ok(("HEAD", "/readyz"))
        );
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n").map_err(|r| r.status),
            Err(405)
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/2\r\n\r\n").map_err(|r| r.status),
            Err(505)
        );
        assert_eq!(parse(b"GET\r\n\r\n").map_err(|r| r.status), Err(400));
    }

    #[test]
    fn encodes_length_and_close() {
        let text = String::from_utf8(encode(&Response::text(503, "loading\n"), false)).expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\nConnection: close\r\n\r\nloading\n"
        );
        let head = String::from_utf8(encode(&Response::text(200, "ok\n"), true)).expect("utf-8");
        assert!(
            head.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }
}
