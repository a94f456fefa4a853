//! A small XML reader and writer for single XMPP stanzas.
//!
//! Over WebSocket (RFC 7395) every frame holds exactly one complete top-level element (`<open/>`,
//! `<stream:features>`, a stanza, `<close/>`), so a stanza is parsed from its frame alone, into
//! a small tree. It understands what servers send: attributes in either quote, namespace
//! prefixes (kept in the name; [`Element::local`] drops them), the five predefined entities and
//! character references, CDATA, comments and processing instructions (skipped). It does not
//! resolve namespaces or validate; the nesting depth is bounded.

use std::fmt;

/// How deep elements may nest; deeper input is refused (no stanza of ours comes close).
const MAX_DEPTH: usize = 64;

/// One element: its name as written, attributes in order, child elements and the character
/// data directly inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    /// The name without its namespace prefix: `features` for `stream:features`.
    pub fn local(&self) -> &str {
        local_of(&self.name)
    }

    /// The value of attribute `name` (matched as written, e.g. `xml:lang`).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child whose local name is `local`.
    pub fn child(&self, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local() == local)
    }

    /// The local name of the first child, if any (the condition of an error element).
    pub fn first_child_name(&self) -> Option<&str> {
        self.children.first().map(Element::local)
    }
}

fn local_of(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Why a frame is not one well-formed element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlError {
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed XML at byte {}: {}", self.at, self.what)
    }
}

impl std::error::Error for XmlError {}

/// Parses the one element of `input` (leading and trailing white space, an XML declaration,
/// comments and processing instructions around it are allowed).
pub fn parse(input: &str) -> Result<Element, XmlError> {
    let mut p = Parser {
        s: input,
        b: input.as_bytes(),
        i: 0,
    };
    p.skip_misc()?;
    let el = p.element(0)?;
    p.skip_misc()?;
    if p.i != p.b.len() {
        return Err(p.err("content after the element"));
    }
    Ok(el)
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &'static str) -> XmlError {
        XmlError { at: self.i, what }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    /// Skips to just past `end`.
    fn skip_past(&mut self, end: &str, what: &'static str) -> Result<&'a str, XmlError> {
        match self.rest().find(end) {
            Some(n) => {
                let inside = &self.s[self.i..self.i + n];
                self.i += n + end.len();
                Ok(inside)
            }
            None => Err(self.err(what)),
        }
    }

    /// White space, comments and processing instructions outside the element.
    fn skip_misc(&mut self) -> Result<(), XmlError> {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<?") {
                self.skip_past("?>", "unterminated processing instruction")?;
            } else if self.rest().starts_with("<!--") {
                self.skip_past("-->", "unterminated comment")?;
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<&'a str, XmlError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || matches!(c, b'/' | b'>' | b'=' | b'<' | b'"' | b'\'') {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("expected a name"));
        }
        Ok(&self.s[start..self.i])
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), XmlError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, XmlError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("elements nested too deep"));
        }
        self.expect(b'<', "expected '<'")?;
        let mut el = Element {
            name: self.name()?.to_owned(),
            ..Element::default()
        };
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'/') => {
                    self.i += 1;
                    self.expect(b'>', "expected '>' after '/'")?;
                    return Ok(el);
                }
                Some(b'>') => {
                    self.i += 1;
                    break;
                }
                Some(_) => {
                    let key = self.name()?.to_owned();
                    self.skip_ws();
                    self.expect(b'=', "expected '=' after an attribute name")?;
                    self.skip_ws();
                    let quote = match self.peek() {
                        Some(q @ (b'"' | b'\'')) => q,
                        _ => return Err(self.err("expected a quoted attribute value")),
                    };
                    self.i += 1;
                    let start = self.i;
                    while self.peek().is_some_and(|c| c != quote) {
                        self.i += 1;
                    }
                    let raw = &self.s[start..self.i];
                    self.expect(quote, "unterminated attribute value")?;
                    el.attrs
                        .push((key, unescape(raw).map_err(|what| self.err(what))?));
                }
                None => return Err(self.err("unterminated start tag")),
            }
        }
        loop {
            let rest = self.rest();
            if rest.starts_with("</") {
                self.i += 2;
                let end = self.name()?;
                if end != el.name {
                    return Err(self.err("end tag does not match the start tag"));
                }
                self.skip_ws();
                self.expect(b'>', "expected '>' to close the end tag")?;
                return Ok(el);
            } else if rest.starts_with("<!--") {
                self.skip_past("-->", "unterminated comment")?;
            } else if rest.starts_with("<![CDATA[") {
                self.i += "<![CDATA[".len();
                let inside = self.skip_past("]]>", "unterminated CDATA section")?;
                el.text.push_str(inside);
            } else if rest.starts_with("<?") {
                self.skip_past("?>", "unterminated processing instruction")?;
            } else if rest.starts_with('<') {
                let child = self.element(depth + 1)?;
                el.children.push(child);
            } else if rest.is_empty() {
                return Err(self.err("unterminated element"));
            } else {
                let n = rest.find('<').unwrap_or(rest.len());
                let raw = &rest[..n];
                self.i += n;
                el.text
                    .push_str(&unescape(raw).map_err(|what| self.err(what))?);
            }
        }
    }
}

/// Replaces entity and character references.
fn unescape(raw: &str) -> Result<String, &'static str> {
    if !raw.contains('&') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp + 1..];
        let semi = rest.find(';').ok_or("unterminated entity reference")?;
        let name = &rest[..semi];
        rest = &rest[semi + 1..];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) =
                    name.strip_prefix("#x").or_else(|| name.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    return Err("unknown entity");
                };
                code.and_then(char::from_u32)
                    .ok_or("bad character reference")?
            }
        };
        out.push(c);
    }
    out.push_str(rest);
    Ok(out)
}

/// `s` escaped for character data or an attribute value in either quote.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (SASL PLAIN's encoding, RFC 4648 section 4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_received_message_parses_with_its_body_and_attributes() {
        let el = parse(
            "<message xmlns='jabber:client' from=\"a@localhost/lt\" to='b@localhost/lt' \
             type='chat' id='p3-17' xml:lang='en'><body>t12.x&amp;&lt;&#65;&#x42;</body>\
             <!-- c --><thread>x</thread></message>",
        )
        .unwrap();
        assert_eq!(el.local(), "message");
        assert_eq!(el.attr("id"), Some("p3-17"));
        assert_eq!(el.attr("from"), Some("a@localhost/lt"));
        assert_eq!(el.attr("xml:lang"), Some("en"));
        assert_eq!(el.child("body").unwrap().text, "t12.x&<AB");
        assert_eq!(el.children.len(), 2);
    }

    #[test]
    fn prefixes_self_closing_and_nesting() {
        let el = parse(
            "<?xml version='1.0'?>\n<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>\
             <mechanism>SCRAM-SHA-1</mechanism></mechanisms><register xmlns='http://jabber.org/features/iq-register'/>\
             <![CDATA[<raw>]]></stream:features>  ",
        )
        .unwrap();
        assert_eq!(el.local(), "features");
        let mechs = el.child("mechanisms").unwrap();
        assert_eq!(mechs.children.len(), 2);
        assert_eq!(mechs.children[0].text, "PLAIN");
        assert!(el.child("register").is_some());
        assert_eq!(el.text, "<raw>");
        let open =
            parse("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='1' version='1.0'/>")
                .unwrap();
        assert_eq!(open.local(), "open");
        assert!(open.children.is_empty());
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a x=1/>",
            "<a x='1/>",
            "<a>&bogus;</a>",
            "<a/><b/>",
            "text",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn escaping_round_trips() {
        let s = "a<b>&\"c'";
        let el = parse(&format!("<x v='{}'>{}</x>", escape(s), escape(s))).unwrap();
        assert_eq!(el.attr("v"), Some(s));
        assert_eq!(el.text, s);
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
    }
}
