//! An XMPP client over WebSocket (RFC 7395): the `xmpp` subprotocol, `<open/>`/`<close/>`
//! framing, one stanza per text frame; in-band registration (XEP-0077), SASL PLAIN, resource
//! binding (RFC 6120 section 7), the session request when the server still requires it, and
//! initial presence.
//!
//! Only the set-up is sequential request-response here; once a user is online its WebSocket is
//! split, and the drivers (`drive.rs`) write stanzas to the sink and read the stream.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::xml::{self, escape, Element};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Ws, WsMessage>;
pub type Stream = SplitStream<Ws>;

const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// The resource every user binds (one connection per user).
pub const RESOURCE: &str = "lt";

/// Checks that `url` is a `ws://` URL on a loopback address: load only goes to this machine.
pub fn check_target(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("target {url:?}: only ws:// targets are supported"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "target {url:?}: the load tester only targets loopback addresses \
             (127.0.0.0/8, ::1, localhost)"
        );
    }
    Ok(())
}

/// `<open/>` of a client stream to `domain`.
fn open_frame(domain: &str) -> String {
    format!(
        "<open xmlns='{NS_FRAMING}' to='{}' version='1.0'/>",
        escape(domain)
    )
}

/// `<close/>`, the end of a stream.
pub fn close_frame() -> String {
    format!("<close xmlns='{NS_FRAMING}'/>")
}

/// How long each set-up step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection during set-up.
pub struct Conn {
    ws: Ws,
    domain: String,
}

/// How long the set-up steps of one user took.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupTimes {
    pub connect: Duration,
    pub register: Duration,
    pub login: Duration,
}

/// A user online: bound, initial presence sent and processed.
pub struct Online {
    pub jid: String,
    pub sink: Sink,
    pub stream: Stream,
    pub times: SetupTimes,
}

impl Conn {
    /// Opens the WebSocket with the `xmpp` subprotocol (Nagle off) and the stream, and returns
    /// the connection with the stream features the server announced.
    pub async fn connect(url: &str, domain: &str) -> anyhow::Result<(Conn, Element)> {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("target {url:?}"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
        let (ws, response) = tokio::time::timeout(
            STEP_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        .map_err(|_| anyhow!("timed out connecting to {url}"))?
        .with_context(|| format!("WebSocket upgrade at {url}"))?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if protocol != "xmpp" {
            bail!("{url} did not accept the xmpp subprotocol (answered {protocol:?})");
        }
        let mut conn = Conn {
            ws,
            domain: domain.to_owned(),
        };
        let features = conn.open_stream().await?;
        Ok((conn, features))
    }

    /// Sends `<open/>` and waits for the server's `<open/>` and `<stream:features>`.
    async fn open_stream(&mut self) -> anyhow::Result<Element> {
        self.send(open_frame(&self.domain)).await?;
        self.wait(|e| e.local() == "open", "the server's <open/>")
            .await?;
        self.wait(|e| e.local() == "features", "stream features")
            .await
    }

    pub async fn send(&mut self, frame: String) -> anyhow::Result<()> {
        self.ws
            .send(WsMessage::Text(frame))
            .await
            .context("writing to the WebSocket")
    }

    /// Reads frames until one satisfies `want`, skipping others (presence, for one); a stream
    /// error or close ends the wait with an error.
    async fn wait(
        &mut self,
        want: impl Fn(&Element) -> bool,
        what: &str,
    ) -> anyhow::Result<Element> {
        wait_for(&mut self.ws, want, what, STEP_TIMEOUT).await
    }

    /// Sends an IQ and waits for its result; an error reply names its condition.
    async fn iq(
        &mut self,
        kind: &str,
        id: &str,
        payload: &str,
        what: &str,
    ) -> anyhow::Result<Element> {
        self.send(format!(
            "<iq xmlns='jabber:client' type='{kind}' id='{id}'>{payload}</iq>"
        ))
        .await?;
        let reply = self
            .wait(|e| e.local() == "iq" && e.attr("id") == Some(id), what)
            .await?;
        match reply.attr("type") {
            Some("result") => Ok(reply),
            _ => {
                let condition = reply
                    .child("error")
                    .and_then(|e| e.first_child_name())
                    .unwrap_or("?")
                    .to_owned();
                bail!("{what} refused: {condition}")
            }
        }
    }

    /// In-band registration (XEP-0077), before authentication.
    pub async fn register(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let payload = format!(
            "<query xmlns='jabber:iq:register'><username>{}</username><password>{}</password></query>",
            escape(user),
            escape(password)
        );
        self.iq("set", "reg1", &payload, "in-band registration")
            .await
            .map(|_| ())
    }

    /// SASL PLAIN, then the stream restart, resource binding, the session if required,
    /// initial presence, and a ping round trip so that the presence has been processed (the
    /// server handles one client's stanzas in order) before anyone sends to this user.
    pub async fn log_in(mut self, user: &str, password: &str) -> anyhow::Result<(Ws, String)> {
        let creds = xml::base64(format!("\0{user}\0{password}").as_bytes());
        self.send(format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await?;
        let answer = self
            .wait(
                |e| matches!(e.local(), "success" | "failure"),
                "the SASL outcome",
            )
            .await?;
        if answer.local() == "failure" {
            bail!(
                "SASL PLAIN refused for {user}: {}",
                answer.first_child_name().unwrap_or("?")
            );
        }
        let features = self.open_stream().await?;
        if features.child("bind").is_none() {
            bail!("the server offers no resource binding after authentication");
        }
        let bound = self
            .iq(
                "set",
                "bind1",
                &format!(
                    "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{RESOURCE}</resource></bind>"
                ),
                "resource binding",
            )
            .await?;
        let jid = bound
            .child("bind")
            .and_then(|b| b.child("jid"))
            .map(|j| j.text.clone())
            .ok_or_else(|| anyhow!("the bind result carries no jid"))?;
        if let Some(session) = features.child("session") {
            if session.child("optional").is_none() {
                self.iq(
                    "set",
                    "sess1",
                    "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>",
                    "session establishment",
                )
                .await?;
            }
        }
        self.send("<presence xmlns='jabber:client'/>".to_owned())
            .await?;
        // Any answer will do (a result, or an error if the server has no ping module): it
        // comes after the presence was handled.
        self.send(format!(
            "<iq xmlns='jabber:client' type='get' id='ready1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
            escape(&self.domain)
        ))
        .await?;
        self.wait(
            |e| e.local() == "iq" && e.attr("id") == Some("ready1"),
            "the ping after presence",
        )
        .await?;
        Ok((self.ws, jid))
    }
}

/// Reads frames from `stream` (a whole WebSocket or its read half) until one satisfies
/// `want`, skipping the others, for at most `timeout`; a stream error or close ends the wait
/// with an error.
pub async fn wait_for<S>(
    stream: &mut S,
    want: impl Fn(&Element) -> bool,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Element>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, stream.next())
            .await
            .map_err(|_| anyhow!("timed out waiting for {what}"))?;
        let text = match frame {
            None => bail!("the server closed the connection while we waited for {what}"),
            Some(Err(e)) => bail!("WebSocket error while waiting for {what}: {e}"),
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(c))) => {
                bail!("the server closed the WebSocket ({c:?}) while we waited for {what}")
            }
            Some(Ok(_)) => continue,
        };
        let el = xml::parse(&text).with_context(|| format!("frame {text:?}"))?;
        match el.local() {
            "error" if el.name.starts_with("stream:") || el.name == "error" => {
                bail!(
                    "stream error {} while waiting for {what}",
                    el.first_child_name().unwrap_or("?")
                )
            }
            "close" => bail!("the server closed the stream while we waited for {what}"),
            _ => {}
        }
        if want(&el) {
            return Ok(el);
        }
    }
}

/// Connects, registers (unless `register` is false: the user exists already) and logs in one
/// user.
pub async fn set_up(
    url: &str,
    domain: &str,
    user: &str,
    password: &str,
    register: bool,
) -> anyhow::Result<Online> {
    let t0 = Instant::now();
    let (mut conn, features) = Conn::connect(url, domain).await?;
    let t1 = Instant::now();
    if register {
        if features.child("register").is_none() {
            bail!(
                "the server does not offer in-band registration (XEP-0077): enable mod_register \
                 with open access"
            );
        }
        conn.register(user, password)
            .await
            .with_context(|| format!("registering {user}@{domain}"))?;
    }
    let t2 = Instant::now();
    let (ws, jid) = conn
        .log_in(user, password)
        .await
        .with_context(|| format!("logging in {user}@{domain}"))?;
    let t3 = Instant::now();
    let (sink, stream) = ws.split();
    Ok(Online {
        jid,
        sink,
        stream,
        times: SetupTimes {
            connect: t1 - t0,
            register: t2 - t1,
            login: t3 - t2,
        },
    })
}

/// The bare JID (`user@domain`) of a full one.
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_loopback_ws_targets_are_accepted() {
        for ok in [
            "ws://127.0.0.1:5280/ws",
            "ws://localhost:5280/ws",
            "ws://[::1]:5280/ws",
            "ws://127.0.0.2/ws",
        ] {
            check_target(ok).unwrap();
        }
        for bad in [
            "wss://127.0.0.1:5280/ws",
            "http://127.0.0.1:5280/ws",
            "ws://10.0.0.1:5280/ws",
            "ws://example.com/ws",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bare_jids() {
        assert_eq!(bare("a@localhost/lt"), "a@localhost");
        assert_eq!(bare("a@localhost"), "a@localhost");
    }
}
