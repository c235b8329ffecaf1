//! A strict, streaming CSV reader that never drops a line silently.
//!
//! Bytes go in by chunks; out come records (with the physical line they start on), blank lines,
//! and bad lines with the reason they could not be read: wrong field count, invalid UTF-8, broken
//! quoting (RFC 4180). A quoted field may span lines; when a record that spans lines turns out
//! bad, only its first physical line is rejected and reading resumes on the next line, so one
//! stray quote cannot swallow the rest of a file.

/// One item read from a CSV input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvItem {
    /// A well-formed record: its fields, as text.
    Record { line: u64, fields: Fields },
    /// A line that could not be read, kept byte for byte.
    Bad { line: u64, raw: Vec<u8>, reason: String },
    /// An empty line.
    Blank { line: u64 },
}

/// The fields of one record: their text one after another and where each ends (two
/// allocations per record, not one per field).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    text: String,
    ends: Vec<usize>,
}

impl Fields {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i` (0-based).
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

impl<S: AsRef<str>> From<&[S]> for Fields {
    fn from(fields: &[S]) -> Self {
        let mut f = Fields::default();
        for s in fields {
            f.text.push_str(s.as_ref());
            f.ends.push(f.text.len());
        }
        f
    }
}

/// Longest record (bytes) a quoted field may stretch to before its opening line is declared bad.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Reads CSV records from bytes pushed in by chunks.
#[derive(Debug)]
pub struct CsvReader {
    delimiter: u8,
    buf: Vec<u8>,
    pos: usize,
    /// Line number of `buf[pos]`, 1-based.
    line: u64,
    /// Number of fields every record must have; set from the header.
    expected: Option<usize>,
    header: Option<Vec<String>>,
    started: bool,
}

/// A candidate record in the buffer.
struct Span {
    start: usize,
    /// Exclusive end of the record's content (without the line terminator).
    end: usize,
    /// Where the next record starts.
    next: usize,
    /// Number of physical lines the record spans.
    lines: u64,
}

impl CsvReader {
    pub fn new(delimiter: u8) -> Self {
        CsvReader {
            delimiter,
            buf: Vec::new(),
            pos: 0,
            line: 1,
            expected: None,
            header: None,
            started: false,
        }
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Adds input bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
        if !self.started && self.buf.len() >= 3 {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.pos += 3; // UTF-8 byte order mark
            }
        }
    }

    /// The next item, or `None` when more input is needed (or, with `eof`, when all is read).
    /// The first record is the header: it is returned as a `Record` on line 1 and fixes the
    /// field count; a bad header is an error for the whole input.
    pub fn next_item(&mut self, eof: bool) -> Option<Result<CsvItem, String>> {
        if eof && !self.started {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.pos += 3;
            }
        }
        let span = self.scan(eof)?;
        let line = self.line;
        let bytes = &self.buf[span.start..span.end];
        if bytes.is_empty() {
            self.advance(&span);
            return Some(Ok(CsvItem::Blank { line }));
        }
        let parsed =
            parse_fields(bytes, self.delimiter).and_then(|(text, ends)| match self.expected {
                Some(n) if ends.len() != n => {
                    Err(format!("expected {n} fields, found {}", ends.len()))
                }
                _ => Ok((text, ends)),
            });
        let item = match parsed {
            Ok((text, ends)) => match to_fields(text, ends) {
                Ok(fields) => CsvItem::Record { line, fields },
                Err(reason) => CsvItem::Bad { line, raw: bytes.to_vec(), reason },
            },
            Err(reason) if span.lines > 1 => {
                // Reject only the first physical line and read on from the next one.
                let first_end = self.buf[span.start..span.end]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(span.end, |i| span.start + i);
                let raw = strip_cr(&self.buf[span.start..first_end]).to_vec();
                let reason = if reason.contains("quot") {
                    reason
                } else {
                    format!(
                        "broken quoting: an open quote runs past the end of the line ({reason})"
                    )
                };
                self.pos = (first_end + 1).min(self.buf.len());
                self.line += 1;
                return Some(self.header_or(CsvItem::Bad { line, raw, reason }));
            }
            Err(reason) => CsvItem::Bad { line, raw: bytes.to_vec(), reason },
        };
        self.advance(&span);
        Some(self.header_or(item))
    }

    /// Turns the first item into the header, or into an error if it is not a good header.
    fn header_or(&mut self, item: CsvItem) -> Result<CsvItem, String> {
        if self.header.is_some() {
            return Ok(item);
        }
        match item {
            CsvItem::Blank { .. } => Ok(item),
            CsvItem::Bad { line, reason, .. } => {
                Err(format!("the header (line {line}) cannot be read: {reason}"))
            }
            CsvItem::Record { line, fields } => {
                let mut seen = std::collections::HashSet::new();
                for (i, f) in fields.iter().enumerate() {
                    if f.trim().is_empty() {
                        return Err(format!(
                            "the header (line {line}) has an empty name for column {}",
                            i + 1
                        ));
                    }
                    if !seen.insert(f) {
                        return Err(format!("the header (line {line}) names column {f:?} twice"));
                    }
                }
                self.expected = Some(fields.len());
                self.header = Some(fields.to_vec());
                Ok(CsvItem::Record { line, fields })
            }
        }
    }

    fn advance(&mut self, span: &Span) {
        self.pos = span.next;
        self.line += span.lines;
    }

    /// Finds the next record: up to the first line break outside quotes.
    fn scan(&self, eof: bool) -> Option<Span> {
        let start = self.pos;
        if start >= self.buf.len() {
            return None;
        }
        let mut in_quotes = false;
        let mut lines = 1u64;
        let mut i = start;
        while i < self.buf.len() {
            match self.buf[i] {
                b'"' => in_quotes = !in_quotes,
                b'\n' if !in_quotes => {
                    let end = if i > start && self.buf[i - 1] == b'\r' { i - 1 } else { i };
                    return Some(Span { start, end, next: i + 1, lines });
                }
                b'\n' => {
                    lines += 1;
                    if i - start > MAX_RECORD_BYTES {
                        // An open quote ran for megabytes: end the record here so that the
                        // first-line fallback rejects its opening line.
                        return Some(Span { start, end: i, next: i + 1, lines });
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if !eof {
            return None;
        }
        let end = if self.buf.len() > start && self.buf[self.buf.len() - 1] == b'\r' {
            self.buf.len() - 1
        } else {
            self.buf.len()
        };
        Some(Span { start, end, next: self.buf.len(), lines })
    }
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn to_fields(text: Vec<u8>, ends: Vec<usize>) -> Result<Fields, String> {
    match String::from_utf8(text) {
        Ok(text) => Ok(Fields { text, ends }),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let i = ends.iter().position(|&end| end > at).unwrap_or(ends.len().saturating_sub(1));
            let start = if i == 0 { 0 } else { ends[i - 1] };
            Err(format!("invalid UTF-8 in field {} at byte {}", i + 1, at - start))
        }
    }
}

/// Splits one record into fields, RFC 4180: fields may be quoted with `"`, a quote inside a quoted
/// field is written `""`, and quoted fields may contain delimiters and line breaks. Returns the
/// fields' bytes one after another, and where each field ends.
pub fn parse_fields(record: &[u8], delimiter: u8) -> Result<(Vec<u8>, Vec<usize>), String> {
    if !record.contains(&b'"') {
        return Ok(split_unquoted(record, delimiter));
    }
    parse_quoted(record, delimiter)
}

/// A record without any quote: the fields are the bytes between delimiters.
fn split_unquoted(record: &[u8], delimiter: u8) -> (Vec<u8>, Vec<usize>) {
    let mut ends = Vec::new();
    for (i, &b) in record.iter().enumerate() {
        if b == delimiter {
            ends.push(i - ends.len());
        }
    }
    let mut text = Vec::with_capacity(record.len());
    for part in record.split(|&b| b == delimiter) {
        text.extend_from_slice(part);
    }
    ends.push(text.len());
    (text, ends)
}

/// The general case: RFC 4180 quoting, byte by byte.
fn parse_quoted(record: &[u8], delimiter: u8) -> Result<(Vec<u8>, Vec<usize>), String> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut ends = Vec::new();
    let mut text = Vec::with_capacity(record.len());
    let mut state = State::FieldStart;
    for (i, &b) in record.iter().enumerate() {
        state = match state {
            State::FieldStart if b == b'"' => State::Quoted,
            State::FieldStart | State::Unquoted if b == delimiter => {
                ends.push(text.len());
                State::FieldStart
            }
            State::FieldStart | State::Unquoted if b == b'"' => {
                return Err(format!(
                    "broken quoting: a quote inside unquoted field {} (byte {})",
                    ends.len() + 1,
                    i + 1
                ));
            }
            State::FieldStart | State::Unquoted => {
                text.push(b);
                State::Unquoted
            }
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => {
                text.push(b);
                State::Quoted
            }
            State::QuoteInQuoted if b == b'"' => {
                text.push(b'"');
                State::Quoted
            }
            State::QuoteInQuoted if b == delimiter => {
                ends.push(text.len());
                State::FieldStart
            }
            State::QuoteInQuoted => {
                return Err(format!(
                    "broken quoting: text after the closing quote of field {} (byte {})",
                    ends.len() + 1,
                    i + 1
                ));
            }
        };
    }
    if state == State::Quoted {
        return Err(format!("broken quoting: field {} has no closing quote", ends.len() + 1));
    }
    ends.push(text.len());
    Ok((text, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], chunk: usize) -> (Vec<CsvItem>, Option<String>) {
        let mut r = CsvReader::new(b',');
        let mut items = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            r.push(c);
            while let Some(item) = r.next_item(false) {
                match item {
                    Ok(i) => items.push(i),
                    Err(e) => return (items, Some(e)),
                }
            }
        }
        while let Some(item) = r.next_item(true) {
            match item {
                Ok(i) => items.push(i),
                Err(e) => return (items, Some(e)),
            }
        }
        (items, None)
    }

    fn rec(line: u64, fields: &[&str]) -> CsvItem {
        CsvItem::Record { line, fields: Fields::from(fields) }
    }

    #[test]
    fn well_formed_with_quotes_newlines_and_crlf() {
        let input =
            b"id,name,note\r\n1,\"Smith, J\",\"said \"\"hi\"\"\"\r\n2,Ann,\"two\nlines\"\n3,,\n";
        for chunk in [1, 2, 5, 1000] {
            let (items, err) = read_all(input, chunk);
            assert_eq!(err, None);
            assert_eq!(
                items,
                vec![
                    rec(1, &["id", "name", "note"]),
                    rec(2, &["1", "Smith, J", "said \"hi\""]),
                    rec(3, &["2", "Ann", "two\nlines"]),
                    rec(5, &["3", "", ""]),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn bad_lines_are_kept_with_reasons() {
        let input = b"a,b\n1,2\n1,2,3\nx\xff,1\n\"open,1\n4,5\nq\"uote,1\n\"x\"y,1\n\n6,7";
        for chunk in [1, 3, 1000] {
            let (items, err) = read_all(input, chunk);
            assert_eq!(err, None);
            let summary: Vec<(u64, String)> = items
                .iter()
                .map(|i| match i {
                    CsvItem::Record { line, fields } => {
                        (*line, format!("ok {}", fields.to_vec().join("|")))
                    }
                    CsvItem::Bad { line, reason, raw } => {
                        (*line, format!("bad {} [{}]", reason, String::from_utf8_lossy(raw)))
                    }
                    CsvItem::Blank { line } => (*line, "blank".into()),
                })
                .collect();
            let expect = |l: u64, s: &str| (l, s.to_string());
            assert_eq!(summary[0], expect(1, "ok a|b"));
            assert_eq!(summary[1], expect(2, "ok 1|2"));
            assert_eq!(summary[2], expect(3, "bad expected 2 fields, found 3 [1,2,3]"));
            assert!(summary[3].1.starts_with("bad invalid UTF-8 in field 1"), "{:?}", summary[3]);
            assert_eq!(summary[3].0, 4);
            assert!(summary[4].1.starts_with("bad broken quoting"), "{:?}", summary[4]);
            assert!(
                summary[4].1.ends_with("[\"open,1]"),
                "only the opening line: {:?}",
                summary[4]
            );
            assert_eq!(summary[4].0, 5);
            assert_eq!(summary[5], expect(6, "ok 4|5"), "reading resumed on the next line");
            assert!(
                summary[6].1.starts_with("bad broken quoting: a quote inside"),
                "{:?}",
                summary[6]
            );
            assert!(summary[7].1.starts_with("bad broken quoting: text after"), "{:?}", summary[7]);
            assert_eq!(summary[8], expect(9, "blank"));
            assert_eq!(summary[9], expect(10, "ok 6|7"));
            assert_eq!(summary.len(), 10, "chunk {chunk}: {summary:?}");
        }
    }

    #[test]
    fn records_without_quotes_split_as_the_general_parser_does() {
        // A small deterministic generator: fields of ASCII, multi-byte text, empty fields,
        // leading and trailing delimiters, with ',' and ';' as delimiters.
        let pieces: [&[u8]; 8] =
            [b"", b"a", b"12.50", b" x y ", "é€".as_bytes(), b"\t", b"z", b"  "];
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for delimiter in [b',', b';'] {
            for _ in 0..2000 {
                let mut record = Vec::new();
                for f in 0..next(6) + 1 {
                    if f > 0 {
                        record.push(delimiter);
                    }
                    record.extend_from_slice(pieces[next(pieces.len())]);
                }
                let fast = split_unquoted(&record, delimiter);
                let general = parse_quoted(&record, delimiter).unwrap();
                assert_eq!(fast, general, "{:?}", String::from_utf8_lossy(&record));
                assert_eq!(parse_fields(&record, delimiter).unwrap(), general);
            }
        }
    }

    #[test]
    fn unterminated_quote_at_the_end() {
        let (items, err) = read_all(b"a,b\n1,\"2\n", 4);
        assert_eq!(err, None);
        assert!(
            matches!(&items[1], CsvItem::Bad { line: 2, reason, .. } if reason.contains("no closing quote"))
        );
    }

    #[test]
    fn bad_headers_fail_the_input() {
        assert!(read_all(b"a,a\n1,2\n", 100).1.unwrap().contains("twice"));
        assert!(read_all(b"a,,c\n1,2,3\n", 100).1.unwrap().contains("empty name"));
        assert!(read_all(b"\xff\n", 100).1.unwrap().contains("header"));
        let (items, err) = read_all(b"\xEF\xBB\xBFid\n7\n", 2);
        assert_eq!(err, None);
        assert_eq!(items, vec![rec(1, &["id"]), rec(2, &["7"])]);
    }
}
