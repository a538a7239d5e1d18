//! Registry identity (job 3): a stable fingerprint of a registry's JSON, and UUID4s.
//!
//! The fingerprint is the SHA-256 (FIPS 180-4, implemented here so it can never change
//! with a dependency or a Rust version) of the canonical form of the JSON text:
//! - insignificant whitespace removed;
//! - object members sorted by key, comparing keys by Unicode code point (Python's `str`
//!   order, as `json.dumps(sort_keys=True)`); a repeated key is an error;
//! - strings re-escaped one way: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control
//!   characters as `\u00xx` (lower-case hex), everything else as raw UTF-8
//!   (so `"\u00e9"` and `"é"` are the same);
//! - numbers and the literals `true`, `false`, `null` kept exactly as written (validated
//!   against the JSON grammar); Python's `NaN`, `Infinity` and `-Infinity` are accepted,
//!   as `json.loads` accepts them.
//!
//! The digest is the 64-character lower-case hex of the SHA-256 of the canonical UTF-8.

use crate::errors::{CoreError, Result};

/// Deepest nesting accepted (beyond it the input is rejected rather than risking the stack).
pub const MAX_JSON_DEPTH: usize = 256;

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, msg: &str) -> CoreError {
        CoreError::value(format!("invalid JSON: {msg} at byte {}", self.pos))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.text[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, out: &mut String, depth: usize) -> Result<()> {
        if depth > MAX_JSON_DEPTH {
            return Err(self.err("nesting deeper than 256 levels"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => self.array(out, depth),
            Some(b'"') => {
                let s = self.string()?;
                write_string(out, &s);
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => {
                if self.eat("-Infinity") {
                    out.push_str("-Infinity");
                    Ok(())
                } else {
                    self.number(out)
                }
            }
            _ => {
                for lit in ["true", "false", "null", "NaN", "Infinity"] {
                    if self.eat(lit) {
                        out.push_str(lit);
                        return Ok(());
                    }
                }
                Err(self.err("expected a value"))
            }
        }
    }

    fn object(&mut self, out: &mut String, depth: usize) -> Result<()> {
        self.pos += 1; // '{'
        let mut members: Vec<(String, String)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push_str("{}");
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            let mut val = String::new();
            self.value(&mut val, depth + 1)?;
            members.push((key, val));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
        // `str` order is code point order, which is byte order of UTF-8.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = members.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CoreError::value(format!(
                "invalid JSON: duplicate object key {}",
                crate::pyfmt::str_repr(&w[0].0)
            )));
        }
        out.push('{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        Ok(())
    }

    fn array(&mut self, out: &mut String, depth: usize) -> Result<()> {
        self.pos += 1; // '['
        out.push('[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            out.push(']');
            return Ok(());
        }
        let mut first = true;
        loop {
            if !first {
                out.push(',');
            }
            first = false;
            self.value(out, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    out.push(']');
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self, out: &mut String) -> Result<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err("bad number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("bad number: digits expected in exponent"));
            }
        }
        out.push_str(&self.text[start..self.pos]);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let s = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        self.pos += 4;
        Ok(u32::from_str_radix(s, 16).expect("checked hex digits"))
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1; // opening quote
        let mut s = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // Stops only at ASCII bytes, so the run is whole UTF-8 characters.
            s.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => s.push('"'),
                        b'\\' => s.push('\\'),
                        b'/' => s.push('/'),
                        b'b' => s.push('\u{8}'),
                        b'f' => s.push('\u{c}'),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat("\\u") {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            let c = char::from_u32(cp)
                                .ok_or_else(|| self.err("unpaired surrogate in \\u escape"))?;
                            s.push(c);
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("unescaped control character in string")),
            }
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The canonical form of `json_text` (see the module docs).
///
/// # Errors
/// [`CoreError::Value`] naming the byte position if the text is not one JSON value.
pub fn canonical_json(json_text: &str) -> Result<String> {
    let mut p = Parser {
        text: json_text,
        bytes: json_text.as_bytes(),
        pos: 0,
    };
    let mut out = String::with_capacity(json_text.len());
    p.value(&mut out, 0)?;
    p.skip_ws();
    if p.pos != json_text.len() {
        return Err(p.err("extra data after the JSON value"));
    }
    Ok(out)
}

/// SHA-256 (FIPS 180-4) of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Lower-case hex SHA-256 of the canonical form of `json_text`.
///
/// # Errors
/// [`CoreError::Value`] if `json_text` is not valid JSON.
pub fn registry_fingerprint(json_text: &str) -> Result<String> {
    Ok(hex(&sha256(canonical_json(json_text)?.as_bytes())))
}

/// Whether `text` is a UUID in canonical 8-4-4-4-12 hex form (either case).
#[must_use]
pub fn validate_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Format 16 random bytes as a version-4, RFC 4122 variant UUID (lower case, like Python's
/// `str(uuid.uuid4())`).
#[must_use]
pub fn uuid4_from_bytes(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A new random UUID4 string from the operating system's random source.
///
/// # Errors
/// [`CoreError::Value`] if the OS random source fails.
pub fn new_uuid() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| CoreError::value(format!("OS random source failed: {e}")))?;
    Ok(uuid4_from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million_a = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha256(&million_a)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn canonical_form() {
        let c = canonical_json(
            " { \"b\" : [1, 2.5e3, -0, true,null], \"a\":{\"y\":\"\\u00e9\\n\",\"x\":{}} } ",
        )
        .unwrap();
        assert_eq!(
            c,
            "{\"a\":{\"x\":{},\"y\":\"é\\n\"},\"b\":[1,2.5e3,-0,true,null]}"
        );
        assert_eq!(
            canonical_json("\"\\ud83d\\ude00\\/\\u0001\"").unwrap(),
            "\"😀/\\u0001\""
        );
        assert_eq!(
            canonical_json("[NaN, Infinity, -Infinity]").unwrap(),
            "[NaN,Infinity,-Infinity]"
        );
        assert_eq!(canonical_json("[]").unwrap(), "[]");
    }

    #[test]
    fn key_order_is_code_point_order() {
        let c = canonical_json("{\"é\":1,\"z\":2,\"Z\":3,\"😀\":4,\"\u{ffff}\":5}").unwrap();
        assert_eq!(c, "{\"Z\":3,\"z\":2,\"é\":1,\"\u{ffff}\":5,\"😀\":4}");
    }

    #[test]
    fn fingerprint_ignores_layout_only() {
        let a = registry_fingerprint("{\"a\": 1, \"b\": [\"x\"]}").unwrap();
        let b = registry_fingerprint("{\n  \"b\": [\"x\"],\n  \"a\": 1\n}").unwrap();
        let c = registry_fingerprint("{\"a\": 2, \"b\": [\"x\"]}").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
        // Pinned: the digest must never change across versions or platforms.
        assert_eq!(
            registry_fingerprint("{}").unwrap(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn invalid_json_is_rejected() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "01",
            "1.",
            "1e",
            "-",
            "tru",
            "\"\\x\"",
            "\"a",
            "\"\u{1}\"",
            "{\"a\":1,\"a\":2}",
            "[1] 2",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "{1:2}",
            "nul",
            "+1",
            ".5",
        ] {
            assert!(canonical_json(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_JSON_DEPTH + 2) + &"]".repeat(MAX_JSON_DEPTH + 2);
        assert!(canonical_json(&deep).is_err());
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(canonical_json(&ok).is_ok());
    }

    #[test]
    fn uuids() {
        assert!(validate_uuid("123e4567-e89b-42d3-a456-426614174000"));
        assert!(validate_uuid("123E4567-E89B-42D3-A456-426614174000"));
        for bad in [
            "",
            "123e4567e89b42d3a456426614174000",
            "{123e4567-e89b-42d3-a456-426614174000}",
            "123e4567-e89b-42d3-a456-42661417400g",
            "123e4567-e89b-42d3-a456_426614174000",
            "123e4567-e89b-42d3-a456-4266141740000",
        ] {
            assert!(!validate_uuid(bad), "{bad}");
        }
        let u = new_uuid().unwrap();
        assert!(validate_uuid(&u));
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uuid().unwrap());
        assert_eq!(
            uuid4_from_bytes([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
    }
}
