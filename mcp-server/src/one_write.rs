//! A streamable-HTTP reply in one write.
//!
//! rmcp answers every request of a session with a short SSE stream: the head goes out as soon
//! as the stream exists, the reply event when the tool is done, and the closing chunk when the
//! session worker drops the stream a moment later. Three writes, three TCP segments and three
//! wake-ups of the client for one answer. [`OneWrite`] holds the head until the first event is
//! ready and ends the body at the event that carries the JSON-RPC reply, after which the
//! stream has nothing left to say. hyper then writes head, event and end in one `writev`.
//! Streams that carry notifications first still stream: only the head waits for them.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::header;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Middleware for the streamable-HTTP endpoint: replies to POSTs go out as one write.
pub async fn replies_in_one_write(req: Request, next: Next) -> Response {
    let post = req.method() == http::Method::POST;
    let resp = next.run(req).await;
    // GET opens the standalone stream, which may stay silent for long: its head goes at once.
    if post { OneWrite::hold_head(resp).await } else { resp }
}

/// A POST reply body that ends at the JSON-RPC reply event (see the module docs).
pub struct OneWrite {
    /// The first frame, read before the head was released.
    first: Option<Frame<Bytes>>,
    inner: Body,
    /// The reply event has been seen: nothing more will be read from `inner`.
    done: bool,
}

impl OneWrite {
    /// Waits for the first frame of an SSE reply and returns the response ready to go out
    /// with it; other responses are returned as they are.
    pub async fn hold_head(resp: Response) -> Response {
        let is_sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return resp;
        }
        let (parts, inner) = resp.into_parts();
        let mut body = OneWrite { first: None, inner, done: false };
        // An error or an end before any frame: hand the body over as is, hyper reports it.
        if let Some(Ok(frame)) = std::future::poll_fn(|cx| body.poll_inner(cx)).await {
            body.first = Some(frame);
        }
        Response::from_parts(parts, Body::new(body))
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && f.data_ref().is_some_and(|d| carries_reply(d))
        {
            self.done = true;
        }
        Poll::Ready(frame)
    }
}

impl HttpBody for OneWrite {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown: the reply is chunked either way.
        SizeHint::default()
    }
}

/// Whether an SSE event holds a JSON-RPC response or error, the last message of a request's
/// stream. Notifications (`"method"` without `"id"`) and server requests (`"id"` then
/// `"method"`) are not. Relies on the field order rmcp serialises (`jsonrpc`, `id`, then
/// `result` or `error`); anything else reads as "not a reply", which only costs the early end.
fn carries_reply(event: &[u8]) -> bool {
    let Some(data) = event.split(|&b| b == b'\n').find_map(|line| line.strip_prefix(b"data: ")) else {
        return false;
    };
    let Some(rest) = data.strip_prefix(br#"{"jsonrpc":"2.0","id":"#) else {
        return false;
    };
    let Some(after_id) = skip_id(rest) else {
        return false;
    };
    after_id.starts_with(br#","result":"#) || after_id.starts_with(br#","error":"#)
}

/// Skips a JSON-RPC id (a number or a string) and returns what follows it.
fn skip_id(s: &[u8]) -> Option<&[u8]> {
    match s.first()? {
        b'"' => {
            let mut i = 1;
            while i < s.len() {
                match s[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(&s[i + 1..]),
                    _ => i += 1,
                }
            }
            None
        }
        b'-' | b'0'..=b'9' => {
            let end = s.iter().position(|&b| !matches!(b, b'-' | b'0'..=b'9'))?;
            Some(&s[end..])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_told_from_notifications_and_requests() {
        assert!(carries_reply(b"data: {\"jsonrpc\":\"2.0\",\"id\":17,\"result\":{}}\nid: 0/3\n\n"));
        assert!(carries_reply(b"id: 0/3\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"a\\\"b\",\"error\":{}}\n\n"));
        assert!(carries_reply(b"data: {\"jsonrpc\":\"2.0\",\"id\":-1,\"result\":{}}\n\n"));
        // A progress notification and a server-to-client request keep the stream open.
        assert!(!carries_reply(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"));
        assert!(!carries_reply(
            b"data: {\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"sampling/createMessage\"}\n\n"
        ));
        // A result string that merely looks like a reply is inside the payload, not after the id.
        assert!(!carries_reply(
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\",\"params\":\",\\\"result\\\":\"}\n\n"
        ));
        assert!(!carries_reply(b"data: \nid: 0/1\nretry: 3000\n\n"));
        assert!(!carries_reply(b": ping\n\n"));
        assert!(!carries_reply(b"data: {\"jsonrpc\":\"2.0\",\"id\":\"unterminated"));
    }

    #[tokio::test]
    async fn the_body_ends_at_the_reply_and_keeps_everything_before_it() {
        let events: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n")),
            Ok(Bytes::from_static(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n")),
            Ok(Bytes::from_static(b"data: never read\n\n")),
        ];
        let stream = futures::stream::iter(events);
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap();
        let resp = OneWrite::hold_head(resp).await;
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            got.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(got.len(), 2);
        assert!(got[1].starts_with(b"data: {\"jsonrpc\":\"2.0\",\"id\":1"));
        assert!(body.is_end_stream());
    }
}
