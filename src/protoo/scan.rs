//! One pass over a frame: checks the JSON grammar (RFC 8259) and what
//! strict peers reject (see [`super::MAX_DEPTH`]), and splits the top
//! object, and the object under one chosen key, into their members as it
//! goes. The frame's text is read once, not once per check and once per
//! level (a room of 8 reads each message once and sends it seven times).

use std::borrow::Cow;

/// Why text is not JSON a strict peer takes.
pub type Why = &'static str;

/// A member of an object: its key (unescaped) and its value's JSON text.
pub type Member<'a> = (Cow<'a, str>, &'a str);

/// What one pass found in a text.
pub struct Scanned<'a> {
    /// The top value's members, when it is an object.
    pub top: Option<Vec<Member<'a>>>,
    /// The members of the object under the chosen key, when there is one;
    /// the last such member's, as a JSON reader that keeps the last
    /// duplicate would see it.
    pub inner: Option<Vec<Member<'a>>>,
}

/// Checks `text` and splits it (see the module's comment). `inner_key`
/// names the member of the top object whose object value is split too.
pub fn scan<'a>(text: &'a str, inner_key: &str) -> Result<Scanned<'a>, Why> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
    };
    s.space();
    let mut found = Scanned {
        top: None,
        inner: None,
    };
    if s.peek() == Some(b'{') {
        let mut top = Vec::with_capacity(4);
        s.object(1, Some(&mut top), Some((inner_key, &mut found.inner)))?;
        found.top = Some(top);
    } else {
        s.value(0)?;
    }
    s.space();
    if s.i != s.b.len() {
        return Err("trailing characters after the JSON value");
    }
    Ok(found)
}

/// Checks one JSON value (with surrounding space) and returns its members
/// when it is an object.
pub fn members(text: &str) -> Result<Option<Vec<Member<'_>>>, Why> {
    scan(text, "").map(|s| s.top)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

/// Where the members of an inner object go: its key and the slot.
type InnerSlot<'s, 'a> = Option<(&'s str, &'s mut Option<Vec<Member<'a>>>)>;

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// One value at `i`; `depth` containers enclose it.
    fn value(&mut self, depth: usize) -> Result<(), Why> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(depth + 1, None, None),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err("expected a JSON value"),
            None => Err("unexpected end of JSON"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Why> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err("expected a JSON value")
        }
    }

    /// An object at `i` (its `{`), at nesting `depth`; its members into
    /// `out`, and the object under `inner`'s key split into its slot.
    fn object(
        &mut self,
        depth: usize,
        mut out: Option<&mut Vec<Member<'a>>>,
        mut inner: InnerSlot<'_, 'a>,
    ) -> Result<(), Why> {
        if self.enter(depth, b'}')? {
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err("expected a string key");
            }
            let text = self.text;
            let start = self.i;
            let escaped = self.string()?;
            let quoted = &text[start..self.i];
            self.space();
            if self.peek() != Some(b':') {
                return Err("expected ':' after a key");
            }
            self.i += 1;
            self.space();
            let at = self.i;
            match inner.as_mut() {
                Some((name, slot))
                    if self.peek() == Some(b'{') && key_text(quoted, escaped)? == *name =>
                {
                    let mut members = Vec::with_capacity(8);
                    self.object(depth + 1, Some(&mut members), None)?;
                    **slot = Some(members);
                }
                _ => self.value(depth)?,
            }
            if let Some(out) = out.as_mut() {
                out.push((key_text(quoted, escaped)?, &text[at..self.i]));
            }
            if self.after_item(b'}', "expected ',' or '}' in an object")? {
                return Ok(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), Why> {
        if self.enter(depth, b']')? {
            return Ok(());
        }
        loop {
            self.value(depth)?;
            if self.after_item(b']', "expected ',' or ']' in an array")? {
                return Ok(());
            }
        }
    }

    /// Enters the container whose opening bracket is at `i`, at nesting
    /// `depth`; true when `close` ends it at once.
    fn enter(&mut self, depth: usize, close: u8) -> Result<bool, Why> {
        if depth > super::MAX_DEPTH {
            return Err("nested too deeply");
        }
        self.i += 1;
        self.space();
        Ok(self.eat(close))
    }

    /// After an item of a container: true at its `close`, false past a
    /// comma (and the space after it).
    fn after_item(&mut self, close: u8, why: Why) -> Result<bool, Why> {
        self.space();
        if self.eat(close) {
            return Ok(true);
        }
        if !self.eat(b',') {
            return Err(why);
        }
        self.space();
        Ok(false)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.i += 1;
        }
        found
    }

    /// A string at `i` (its opening quote); true when it holds an escape.
    fn string(&mut self) -> Result<bool, Why> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // Plain bytes first: most of a message is its text.
            self.i += plain_run(self.b.get(self.i..).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err("control character in a string"),
                None => return Err("unterminated string"),
            }
        }
    }

    /// An escape at `i` (its backslash).
    fn escape(&mut self) -> Result<(), Why> {
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex(self.i + 2).ok_or("invalid \\u escape")?;
                if (0xDC00..0xE000).contains(&unit) {
                    return Err("lone low surrogate in a \\u escape");
                }
                if (0xD800..0xDC00).contains(&unit) {
                    let low = (self.b.get(self.i + 6..self.i + 8) == Some(b"\\u"))
                        .then(|| self.hex(self.i + 8))
                        .flatten();
                    if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                        return Err("lone high surrogate in a \\u escape");
                    }
                    self.i += 6;
                }
                self.i += 6;
                Ok(())
            }
            _ => Err("invalid escape in a string"),
        }
    }

    fn hex(&self, at: usize) -> Option<u16> {
        let digits = self.b.get(at..at + 4)?;
        digits.iter().try_fold(0u16, |n, &d| {
            let v = char::from(d).to_digit(16)?;
            Some(n << 4 | u16::try_from(v).ok()?)
        })
    }

    /// A number at `i`, by the grammar, that a double holds.
    fn number(&mut self) -> Result<(), Why> {
        const BAD: Why = "invalid number";
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(BAD),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(BAD);
            }
            self.digits();
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            exponent = true;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(BAD);
            }
            self.digits();
        }
        // Doubles overflow past about 1.8e308: only exponents and very
        // long numbers can.
        let token = &self.text[start..self.i];
        if (exponent || token.len() > 300) && !token.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err("number out of range of a double");
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }
}

/// How many bytes at the start of `b` need no attention inside a string
/// (no quote, backslash or control character): eight at a time, then one
/// by one.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // The high bit of each byte of `w` below `n`, exact for the lowest
    // such byte (a borrow only runs upwards from it).
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let mut i = 0;
    for chunk in b.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - i)
}

/// A key's text, unescaped when it holds an escape (`quoted` is the whole
/// string, quotes included, as scanned).
fn key_text(quoted: &str, escaped: bool) -> Result<Cow<'_, str>, Why> {
    if escaped {
        serde_json::from_str::<String>(quoted)
            .map(Cow::Owned)
            .map_err(|_| "invalid key")
    } else {
        quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .map(Cow::Borrowed)
            .ok_or("invalid key")
    }
}
