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
    /// Up to where (in `buf`) the input holds a quote: records are read one at a time there.
    quoted_until: usize,
    /// A plain block being looked for (so that each byte is scanned once as input comes in).
    scan: Scan,
}

/// How far [`CsvReader::next_plain`] has looked for the end of a block.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// Where the block starts in `buf`.
    from: usize,
    /// Bytes of it scanned.
    scanned: usize,
    /// Lines ended so far, and where the last one ended.
    lines: usize,
    line_end: usize,
    /// Whether the scan is inside quotes.
    in_quotes: bool,
}

impl Default for Scan {
    fn default() -> Self {
        Scan { from: usize::MAX, scanned: 0, lines: 0, line_end: 0, in_quotes: false }
    }
}

/// What [`CsvReader::next_plain`] found at the reading position.
#[derive(Debug)]
pub enum Next {
    /// A block of whole lines without a quote: every line is one record (or a blank or bad line).
    Plain(PlainBlock),
    /// Read the next record with [`CsvReader::next_item`]: the header is still to come, the input
    /// has a quote near here, or the delimiter is not one the plain reading handles.
    Record,
    /// Push more input first.
    NeedMore,
}

/// Whole lines of input without a quote character, the first on line `first_line`. Read it with
/// [`read_plain`]; this can happen on any thread, since every line is a record of its own.
#[derive(Debug)]
pub struct PlainBlock {
    pub bytes: Vec<u8>,
    pub first_line: u64,
}

/// One line of a [`PlainBlock`], as [`read_plain`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainLine<'a> {
    /// A record: field `i` is `text[bounds[i].0..bounds[i].1]`.
    Record {
        line: u64,
        text: &'a str,
        bounds: &'a [(usize, usize)],
    },
    Bad {
        line: u64,
        raw: &'a [u8],
        reason: String,
    },
    Blank {
        line: u64,
    },
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
            quoted_until: 0,
            scan: Scan::default(),
        }
    }

    /// The number of fields every record has, once the header is read.
    pub fn expected(&self) -> Option<usize> {
        self.expected
    }

    /// Takes the next block of whole lines that are each one record: up to `max_lines` lines, or
    /// as many as end by `max_bytes` past the reading position (at least one). A line break
    /// inside quotes (a field that spans lines) must be read record by record, since where such a
    /// record ends depends on whether its quoting holds: the lines before it come as a block, and
    /// then, until past that line break, this says [`Next::Record`]. It says so too until the
    /// header is read. Where blocks end depends only on the input, never on how it was pushed in.
    pub fn next_plain(&mut self, eof: bool, max_lines: usize, max_bytes: usize) -> Next {
        let d = self.delimiter;
        let plain_delimiter = d.is_ascii() && !matches!(d, b'"' | b'\n' | b'\r');
        if self.expected.is_none() || !plain_delimiter || self.pos < self.quoted_until {
            return Next::Record;
        }
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return if eof { Next::Record } else { Next::NeedMore };
        }
        let mut scan = match self.scan {
            scan if scan.from == self.pos => scan,
            _ => Scan { from: self.pos, ..Scan::default() },
        };
        let mut end = None;
        for i in memchr::memchr2_iter(b'"', b'\n', &rest[scan.scanned..]) {
            let i = scan.scanned + i;
            if rest[i] == b'"' {
                scan.in_quotes = !scan.in_quotes;
                continue;
            }
            if scan.in_quotes {
                if scan.lines == 0 {
                    self.quoted_until = self.pos + i + 1;
                    self.scan = Scan::default();
                    return Next::Record;
                }
                end = Some(scan.line_end);
                break;
            }
            scan.lines += 1;
            scan.line_end = i + 1;
            if scan.lines >= max_lines || i + 1 >= max_bytes {
                end = Some(i + 1);
                break;
            }
        }
        let end = match end {
            Some(end) => end,
            None if eof => {
                if !rest.ends_with(b"\n") {
                    scan.lines += 1;
                }
                rest.len()
            }
            None => {
                scan.scanned = rest.len();
                self.scan = scan;
                return Next::NeedMore;
            }
        };
        let lines = scan.lines;
        self.scan = Scan::default();
        let block = PlainBlock { bytes: rest[..end].to_vec(), first_line: self.line };
        self.pos += end;
        self.line += lines as u64;
        Next::Plain(block)
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&[String]> {
        self.header.as_deref()
    }

    /// Adds input bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.quoted_until = self.quoted_until.saturating_sub(self.pos);
            self.scan.from = self.scan.from.wrapping_sub(self.pos);
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

/// Reads the lines of a [`PlainBlock`] in order, as [`CsvReader::next_item`] would read them:
/// records of `expected` fields, blank lines, and bad lines (broken quoting, wrong field count,
/// invalid UTF-8) with the same reasons.
pub fn read_plain(
    block: &PlainBlock,
    delimiter: u8,
    expected: usize,
    mut each: impl FnMut(PlainLine<'_>),
) {
    let bytes = block.bytes.as_slice();
    // Valid UTF-8 as a whole (the usual case) is checked once; otherwise line by line.
    let whole = std::str::from_utf8(bytes).ok();
    let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(expected);
    let (mut unquoted, mut ends) = (Vec::new(), Vec::with_capacity(expected));
    let mut start = 0;
    let mut line = block.first_line;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let content = strip_cr(&bytes[start..end]);
        let (from, to) = (start, start + content.len());
        start = end + 1;
        let this = line;
        line += 1;
        if content.is_empty() {
            each(PlainLine::Blank { line: this });
            continue;
        }
        bounds.clear();
        if memchr::memchr(b'"', content).is_some() {
            // Quoted fields: their text, unquoted, one after another.
            if let Err(reason) = split_fields(content, delimiter, &mut unquoted, &mut ends) {
                each(PlainLine::Bad { line: this, raw: content, reason });
                continue;
            }
            if ends.len() != expected {
                let reason = format!("expected {expected} fields, found {}", ends.len());
                each(PlainLine::Bad { line: this, raw: content, reason });
                continue;
            }
            let starts = std::iter::once(0).chain(ends.iter().copied());
            bounds.extend(starts.zip(ends.iter().copied()));
            // Valid as a whole and split at character boundaries is valid field by field.
            let text =
                std::str::from_utf8(&unquoted).map_err(|e| e.to_string()).and_then(
                    |t| match bounds.iter().all(|&(_, end)| t.is_char_boundary(end)) {
                        true => Ok(t),
                        false => Err("a character split between fields".to_string()),
                    },
                );
            match text {
                Ok(text) => each(PlainLine::Record { line: this, text, bounds: &bounds }),
                Err(e) => {
                    let fields = bounds.iter().map(|&(a, b)| &unquoted[a..b]);
                    let reason =
                        invalid_field(fields).unwrap_or_else(|| format!("invalid UTF-8: {e}"));
                    each(PlainLine::Bad { line: this, raw: content, reason });
                }
            }
            continue;
        }
        let mut field_start = 0;
        for i in memchr::memchr_iter(delimiter, content) {
            bounds.push((field_start, i));
            field_start = i + 1;
        }
        bounds.push((field_start, content.len()));
        if bounds.len() != expected {
            let reason = format!("expected {expected} fields, found {}", bounds.len());
            each(PlainLine::Bad { line: this, raw: content, reason });
            continue;
        }
        let text = match whole {
            Some(text) => Ok(&text[from..to]),
            None => std::str::from_utf8(content),
        };
        match text {
            Ok(text) => each(PlainLine::Record { line: this, text, bounds: &bounds }),
            Err(e) => {
                let reason = invalid_field(bounds.iter().map(|&(a, b)| &content[a..b]))
                    .unwrap_or_else(|| format!("invalid UTF-8: {e}"));
                each(PlainLine::Bad { line: this, raw: content, reason });
            }
        }
    }
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// Why one of the fields is not text: the first field that is not valid UTF-8 on its own.
fn invalid_field<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    fields.enumerate().find_map(|(i, field)| {
        std::str::from_utf8(field)
            .err()
            .map(|e| format!("invalid UTF-8 in field {} at byte {}", i + 1, e.valid_up_to()))
    })
}

/// Checks every field on its own: a multi-byte character split by a delimiter is invalid even
/// though the fields' bytes joined would read as text.
fn to_fields(text: Vec<u8>, ends: Vec<usize>) -> Result<Fields, String> {
    let starts = std::iter::once(0).chain(ends.iter().copied());
    if let Some(reason) = invalid_field(starts.zip(&ends).map(|(start, &end)| &text[start..end])) {
        return Err(reason);
    }
    let text = String::from_utf8(text).map_err(|e| format!("invalid UTF-8: {e}"))?;
    Ok(Fields { text, ends })
}

/// Splits one record into fields, RFC 4180: fields may be quoted with `"`, a quote inside a quoted
/// field is written `""`, and quoted fields may contain delimiters and line breaks. Returns the
/// fields' bytes one after another, and where each field ends.
pub fn parse_fields(record: &[u8], delimiter: u8) -> Result<(Vec<u8>, Vec<usize>), String> {
    if !record.contains(&b'"') {
        return Ok(split_unquoted(record, delimiter));
    }
    let (mut text, mut ends) = (Vec::with_capacity(record.len()), Vec::new());
    split_fields(record, delimiter, &mut text, &mut ends)?;
    Ok((text, ends))
}

/// Splits one record as [`parse_fields`] does, into buffers it clears first, a run of bytes at a
/// time: the text of fields one after another in `text`, where each ends in `ends`.
fn split_fields(
    record: &[u8],
    delimiter: u8,
    text: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(), String> {
    text.clear();
    ends.clear();
    let mut i = 0;
    loop {
        if record.get(i) == Some(&b'"') {
            // A quoted field: runs up to each quote; a doubled quote is one quote of text.
            i += 1;
            loop {
                let Some(q) = memchr::memchr(b'"', &record[i..]).map(|q| i + q) else {
                    return Err(format!(
                        "broken quoting: field {} has no closing quote",
                        ends.len() + 1
                    ));
                };
                text.extend_from_slice(&record[i..q]);
                if record.get(q + 1) == Some(&b'"') {
                    text.push(b'"');
                    i = q + 2;
                } else {
                    i = q + 1;
                    break;
                }
            }
            ends.push(text.len());
            match record.get(i) {
                None => return Ok(()),
                Some(&b) if b == delimiter => i += 1,
                Some(_) => {
                    return Err(format!(
                        "broken quoting: text after the closing quote of field {} (byte {})",
                        ends.len(),
                        i + 1
                    ))
                }
            }
        } else {
            match memchr::memchr2(delimiter, b'"', &record[i..]).map(|j| i + j) {
                Some(j) if record[j] == b'"' => {
                    return Err(format!(
                        "broken quoting: a quote inside unquoted field {} (byte {})",
                        ends.len() + 1,
                        j + 1
                    ));
                }
                Some(j) => {
                    text.extend_from_slice(&record[i..j]);
                    ends.push(text.len());
                    i = j + 1;
                }
                None => {
                    text.extend_from_slice(&record[i..]);
                    ends.push(text.len());
                    return Ok(());
                }
            }
        }
    }
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

/// RFC 4180 quoting, byte by byte: the reference [`split_fields`] is tested against.
#[cfg(test)]
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

    /// A small deterministic generator: `next(n)` is in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        }
    }

    /// Reads as the lander does: plain blocks where the reader offers them, records otherwise.
    /// Also returns each block's first line and length.
    fn read_blocks(
        input: &[u8],
        chunk: usize,
        max_lines: usize,
        max_bytes: usize,
    ) -> (Vec<CsvItem>, Option<String>, Vec<(u64, usize)>) {
        let mut r = CsvReader::new(b',');
        let (mut items, mut blocks) = (Vec::new(), Vec::new());
        let mut chunks = input.chunks(chunk.max(1));
        let mut eof = false;
        loop {
            match chunks.next() {
                Some(c) => r.push(c),
                None => eof = true,
            }
            loop {
                match r.next_plain(eof, max_lines, max_bytes) {
                    Next::NeedMore => break,
                    Next::Plain(block) => {
                        blocks.push((block.first_line, block.bytes.len()));
                        let expected = r.expected().unwrap();
                        read_plain(&block, b',', expected, |line| {
                            items.push(match line {
                                PlainLine::Record { line, text, bounds } => {
                                    let fields: Vec<&str> =
                                        bounds.iter().map(|&(a, b)| &text[a..b]).collect();
                                    rec(line, &fields)
                                }
                                PlainLine::Bad { line, raw, reason } => {
                                    CsvItem::Bad { line, raw: raw.to_vec(), reason }
                                }
                                PlainLine::Blank { line } => CsvItem::Blank { line },
                            })
                        });
                    }
                    Next::Record => match r.next_item(eof) {
                        Some(Ok(item)) => items.push(item),
                        Some(Err(e)) => return (items, Some(e), blocks),
                        None => break,
                    },
                }
            }
            if eof {
                return (items, None, blocks);
            }
        }
    }

    #[test]
    fn plain_blocks_read_as_records_do() {
        // Lines of every kind: good, blank, CRLF, too few and too many fields, invalid UTF-8
        // (also a character split by a delimiter), multi-byte text, and quoted fields (some
        // spanning lines, some broken) that make the reader go record by record.
        let pieces: [&[u8]; 19] = [
            b"1,a,b\n",
            b"2,,\r\n",
            b"\n",
            b"\r\n",
            b"3,x\n",
            b"4,x,y,z\n",
            b"5,\xff,c\n",
            b"6,\xc3,\xa9\n",
            "7,é€,ß\n".as_bytes(),
            b"8,\"q,1\",c\n",
            b"9,\"two\nlines\",c\n",
            b"10,\"open,c\n",
            b"11,x\"y,c\n",
            b" , ,\t\n",
            b"12,x\"y\"z,c\n",
            b"13,\"a\"b,c\n",
            b"14,\"a\"\"b\",\"\"\r\n",
            b"15,\"a\"\n",
            b"16,\"\xc3\",\"\xa9\"\n",
        ];
        let mut next = xorshift(0x9e37_79b9_u64);
        let mut plain_blocks = 0;
        for round in 0..300 {
            let mut input = b"id,p,q\n".to_vec();
            // Some inputs without any quote, so that they are read in blocks throughout.
            let kinds = if round % 3 == 0 { 8 } else { pieces.len() };
            for _ in 0..next(40) {
                input.extend_from_slice(pieces[next(kinds)]);
            }
            if next(2) == 0 {
                input.extend_from_slice(b"12,last,line"); // no line break at the end
            }
            let (records, err, _) = read_blocks(&input, input.len(), 1, 0);
            assert_eq!(err, None);
            // `read_blocks` with one line per block and chunks of any size must agree with
            // reading record by record.
            let (expected, _) = read_all(&input, 7);
            assert_eq!(records, expected, "{:?}", String::from_utf8_lossy(&input));
            for (chunk, lines, bytes) in
                [(1, 3, 1000), (5, 1000, 16), (64, 2, 8), (4096, 100, 4096)]
            {
                let (items, err, blocks) = read_blocks(&input, chunk, lines, bytes);
                assert_eq!(err, None);
                assert_eq!(
                    items,
                    expected,
                    "chunk {chunk}, {lines} lines, {bytes} bytes: {:?}",
                    String::from_utf8_lossy(&input)
                );
                plain_blocks += blocks.len();
            }
        }
        assert!(plain_blocks > 1000, "the plain reading was used: {plain_blocks} blocks");
    }

    #[test]
    fn blocks_end_where_the_input_says_not_where_chunks_do() {
        let mut input = b"id,v\n".to_vec();
        for i in 0..1000 {
            input.extend_from_slice(format!("{i},{}\n", "x".repeat(i % 13)).as_bytes());
        }
        let ends = |chunk: usize| read_blocks(&input, chunk, 100, 700).2;
        let whole = ends(input.len());
        assert!(whole.len() > 10, "{whole:?}");
        assert!(whole.iter().all(|&(_, len)| len <= 700 + 20), "{whole:?}");
        for chunk in [1, 3, 100, 4096] {
            assert_eq!(ends(chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn a_character_split_by_a_delimiter_is_invalid_text() {
        let (items, err) = read_all(b"a,b\n\xc3,\xa9\n", 100);
        assert_eq!(err, None);
        assert!(
            matches!(&items[1], CsvItem::Bad { line: 2, reason, .. } if reason == "invalid UTF-8 in field 1 at byte 0"),
            "{items:?}"
        );
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
        let mut next = xorshift(0x2545_f491_u64);
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
    fn quoted_records_split_as_the_byte_by_byte_parser_does() {
        let pieces: [&[u8]; 10] =
            [b"", b"a", b"\"", b"\"\"", b",", b"x y", "é".as_bytes(), b"\n", b"\"q,\"", b";"];
        let mut next = xorshift(0x1234_5678_u64);
        let (mut oks, mut errs) = (0, 0);
        for delimiter in [b',', b';'] {
            for _ in 0..20000 {
                let record: Vec<u8> =
                    (0..next(8)).flat_map(|_| pieces[next(pieces.len())].to_vec()).collect();
                let (mut text, mut ends) = (vec![b'?'], vec![99]);
                let fast =
                    split_fields(&record, delimiter, &mut text, &mut ends).map(|()| (text, ends));
                let reference = parse_quoted(&record, delimiter);
                assert_eq!(fast, reference, "{:?}", String::from_utf8_lossy(&record));
                if reference.is_ok() {
                    oks += 1
                } else {
                    errs += 1
                }
            }
        }
        assert!(oks > 5000 && errs > 5000, "both kinds were tried: {oks} ok, {errs} broken");
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
