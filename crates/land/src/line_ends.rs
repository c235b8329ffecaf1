//! Line ends of text inputs: LF, CRLF, and the lone CR of classic Mac OS.
//!
//! The CSV and JSON lines readers split lines at LF (a CR before it is dropped). A file whose
//! lines end with a lone CR has no LF at all, so it would read as one line: a CSV header and no
//! rows, without a word. So the line end of a file is decided by its first line break: if that is
//! a lone CR (not followed by LF), the file is read with every CR, CRLF and LF as one line end,
//! each turned into one LF before the readers see it, so line numbers count the file's own lines.
//! Any other file passes through untouched (a CR inside a line of an LF or CRLF file is text).
//! In a CR file, a line break inside a quoted CSV field is read as LF.
//!
//! The input's sha256 and size are always those of its own bytes.

use bytes::Bytes;

/// The line ends of a file, as far as they are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnds {
    /// No line break seen yet (or a CR at the end of what was seen, not knowing what follows).
    Undecided,
    /// LF or CRLF: the readers' own.
    Lf,
    /// Lone CRs: every CR, CRLF and LF is one line end.
    Cr,
}

/// The line ends of a file that starts with `head`, if `head` tells: decided by the first line
/// break. At the end of the file (`eof`), a last CR is a lone CR and no line break means LF.
pub fn line_ends_of(head: &[u8], eof: bool) -> LineEnds {
    match memchr::memchr2(b'\r', b'\n', head) {
        Some(i) if head[i] == b'\n' => LineEnds::Lf,
        Some(i) => match head.get(i + 1) {
            Some(b'\n') => LineEnds::Lf,
            Some(_) => LineEnds::Cr,
            None if eof => LineEnds::Cr,
            None => LineEnds::Undecided,
        },
        None if eof => LineEnds::Lf,
        None => LineEnds::Undecided,
    }
}

/// Turns the chunks of a file into chunks whose lines end with LF: unchanged (and not copied)
/// unless the file's lines end with lone CRs (see the module documentation).
#[derive(Debug)]
pub struct LineEndReader {
    ends: LineEnds,
    /// Bytes held while the line end is undecided.
    held: Vec<u8>,
    /// In a CR file: the last byte given out was a CR, so an LF right after it is the same line
    /// end.
    after_cr: bool,
}

impl Default for LineEndReader {
    fn default() -> Self {
        LineEndReader { ends: LineEnds::Undecided, held: Vec::new(), after_cr: false }
    }
}

impl LineEndReader {
    /// The line ends found so far.
    pub fn ends(&self) -> LineEnds {
        self.ends
    }

    /// The next chunk of the file, as the readers should see it (maybe empty, while undecided).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        match self.ends {
            LineEnds::Lf => chunk,
            LineEnds::Cr => self.translate(&chunk),
            LineEnds::Undecided => {
                self.held.extend_from_slice(&chunk);
                self.decide(false)
            }
        }
    }

    /// The end of the file: what is still held.
    pub fn finish(&mut self) -> Bytes {
        match self.ends {
            LineEnds::Undecided => self.decide(true),
            _ => Bytes::new(),
        }
    }

    fn decide(&mut self, eof: bool) -> Bytes {
        self.ends = line_ends_of(&self.held, eof);
        let held = std::mem::take(&mut self.held);
        match self.ends {
            LineEnds::Undecided => {
                self.held = held;
                Bytes::new()
            }
            LineEnds::Lf => Bytes::from(held),
            LineEnds::Cr => self.translate(&held),
        }
    }

    fn translate(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(chunk.len());
        let mut from = 0;
        for i in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            out.extend_from_slice(&chunk[from..i]);
            from = i + 1;
            if chunk[i] == b'\n' && self.after_cr && i == 0 {
                // The LF of a CRLF whose CR ended the chunk before.
            } else if chunk[i] == b'\n' && i > 0 && chunk[i - 1] == b'\r' {
                // The LF of a CRLF.
            } else {
                out.push(b'\n');
            }
        }
        out.extend_from_slice(&chunk[from..]);
        if !chunk.is_empty() {
            self.after_cr = chunk[chunk.len() - 1] == b'\r';
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` read in chunks of `n` bytes.
    fn read(input: &[u8], n: usize) -> (Vec<u8>, LineEnds) {
        let mut r = LineEndReader::default();
        let mut out = Vec::new();
        for c in input.chunks(n.max(1)) {
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&r.finish());
        (out, r.ends())
    }

    #[test]
    fn the_first_line_break_decides() {
        assert_eq!(line_ends_of(b"a,b\nc\rd", false), LineEnds::Lf);
        assert_eq!(line_ends_of(b"a,b\r\nc", false), LineEnds::Lf);
        assert_eq!(line_ends_of(b"a,b\rc\n", false), LineEnds::Cr);
        assert_eq!(line_ends_of(b"a,b\r", false), LineEnds::Undecided, "CRLF or CR?");
        assert_eq!(line_ends_of(b"a,b\r", true), LineEnds::Cr);
        assert_eq!(line_ends_of(b"a,b", false), LineEnds::Undecided);
        assert_eq!(line_ends_of(b"a,b", true), LineEnds::Lf);
        assert_eq!(line_ends_of(b"", true), LineEnds::Lf);
    }

    #[test]
    fn lone_crs_become_lfs_and_other_files_pass_unchanged() {
        for n in [1, 2, 3, 5, 64] {
            // Classic Mac: one LF per CR; a CRLF or LF among them is one line end too.
            let (out, ends) = read(b"id,a\r1,x\r2,y\r\n3,z\n\r4,w\r", n);
            assert_eq!(ends, LineEnds::Cr, "chunks of {n}");
            assert_eq!(out, b"id,a\n1,x\n2,y\n3,z\n\n4,w\n", "chunks of {n}");
            // Blank lines stay lines: CR CR is two line ends.
            assert_eq!(read(b"a\r\rb", n).0, b"a\n\nb");
            // LF and CRLF files are not touched, a CR inside a line included.
            for text in [&b"id,a\n1,x\ry\n"[..], b"id,a\r\n1,x\r\n", b"no line break", b""] {
                let (out, ends) = read(text, n);
                assert_eq!(out, text, "chunks of {n}");
                assert_eq!(ends, LineEnds::Lf);
            }
        }
    }
}
