//! The entropy-coded segment: a bit reader that removes byte stuffing and stops at markers,
//! and canonical Huffman tables (ITU T.81 annex C/F).

use super::JpegError;

/// Bits of one entropy-coded segment, most significant first. At a marker it reads zeros, as
/// libjpeg does, and leaves `pos` on the marker.
pub(super) struct BitReader<'a> {
    data: &'a [u8],
    pub(super) pos: usize,
    acc: u64,
    bits: u32,
    /// How many of the `bits` (the last ones) are zeros padded in past the marker.
    pad: u32,
    /// Set once a marker (or the end of the data) has been reached.
    at_marker: bool,
    /// Set once a bit past the marker was consumed: the segment ran out of data (libjpeg's
    /// `insufficient_data`), cleared by a restart marker.
    pub(super) exhausted: bool,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            bits: 0,
            pad: 0,
            at_marker: false,
            exhausted: false,
        }
    }

    /// At least 57 bits in the accumulator.
    fn fill(&mut self) {
        while self.bits <= 56 {
            let byte = if self.at_marker {
                self.pad += 8;
                0
            } else {
                match self.data.get(self.pos) {
                    None => {
                        self.at_marker = true;
                        self.pad += 8;
                        0
                    }
                    Some(&0xFF) => {
                        // 0xFF 0x00 is a data 0xFF; 0xFF fill bytes run up to either.
                        let mut next = self.pos + 1;
                        while self.data.get(next) == Some(&0xFF) {
                            next += 1;
                        }
                        if self.data.get(next) == Some(&0x00) {
                            self.pos = next + 1;
                            0xFF
                        } else {
                            self.pos = next - 1;
                            self.at_marker = true;
                            self.pad += 8;
                            0
                        }
                    }
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                }
            };
            self.acc |= (byte as u64) << (56 - self.bits);
            self.bits += 8;
        }
    }

    fn peek(&mut self, n: u32) -> u32 {
        self.fill();
        (self.acc >> (64 - n)) as u32
    }

    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.bits -= n;
        // The padding is the accumulator's tail: fewer bits left than padded means some of the
        // zeros handed out were not data.
        if self.bits < self.pad {
            self.pad = self.bits;
            self.exhausted = true;
        }
    }

    pub(super) fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    pub(super) fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// `n` bits as the signed value they code (T.81 F.2.2.1 EXTEND).
    pub(super) fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.bits(n) as i32;
        if v < 1 << (n - 1) {
            v - (1 << n) + 1
        } else {
            v
        }
    }

    /// At a restart interval: drops the partial byte and reads the `RSTn` marker that must come.
    pub(super) fn restart(&mut self) -> Result<(), JpegError> {
        self.acc = 0;
        self.bits = 0;
        self.pad = 0;
        if !self.at_marker {
            // Any bytes before the marker are padding the encoder left.
            self.skip_to_marker();
        }
        while self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match self.data.get(self.pos..self.pos + 2) {
            Some([0xFF, m]) if (0xD0..=0xD7).contains(m) => {
                self.pos += 2;
                self.at_marker = false;
                self.exhausted = false;
                Ok(())
            }
            _ => Err(JpegError::Corrupt("missing restart marker")),
        }
    }

    /// Whether the reader stands on a restart marker (fill bytes before it allowed), where
    /// [`BitReader::restart`] resumes.
    pub(super) fn at_restart_marker(&self) -> bool {
        let mut at = self.pos;
        if !self.at_marker {
            return false;
        }
        while self.data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        matches!(self.data.get(at..at + 2), Some([0xFF, m]) if (0xD0..=0xD7).contains(m))
    }

    /// The position of the marker after the segment.
    pub(super) fn finish(mut self) -> usize {
        if !self.at_marker {
            self.skip_to_marker();
            self.at_marker = true;
        }
        self.pos
    }

    /// Moves `pos` to the next marker (0xFF, then neither 0x00 nor 0xFF) or the end.
    fn skip_to_marker(&mut self) {
        while let Some(&[a, b]) = self.data.get(self.pos..self.pos + 2) {
            if a == 0xFF && !matches!(b, 0x00 | 0xFF) {
                return;
            }
            self.pos += 1;
        }
    }
}

/// A canonical Huffman table: a 9-bit lookup, then the code lengths 10–16.
#[derive(Clone)]
pub(super) struct Huffman {
    /// `(length, value)` for every 9-bit prefix; length 0 where the code is longer.
    lookup: Vec<(u8, u8)>,
    /// The largest code of each length (-1 where none).
    max_code: [i32; 17],
    /// Index into `values` of a code of each length, less that code.
    offset: [i32; 17],
    values: Vec<u8>,
}

const LOOKUP_BITS: u32 = 9;

impl Huffman {
    pub(super) fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, JpegError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total != values.len() || total > 256 {
            return Err(JpegError::Corrupt("Huffman table size"));
        }
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKUP_BITS];
        let (mut max_code, mut offset) = ([-1i32; 17], [0i32; 17]);
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let count = counts[len as usize - 1] as usize;
            offset[len as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << len {
                    return Err(JpegError::Corrupt("Huffman table codes overflow"));
                }
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    for fill in 0..1u32 << shift {
                        lookup[((code << shift) | fill) as usize] = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                max_code[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(Self {
            lookup,
            max_code,
            offset,
            values,
        })
    }

    /// The next symbol.
    pub(super) fn decode(&self, r: &mut BitReader) -> u8 {
        let (len, value) = self.lookup[r.peek(LOOKUP_BITS) as usize];
        if len > 0 {
            r.consume(len as u32);
            return value;
        }
        let bits = r.peek(16);
        for len in LOOKUP_BITS + 1..=16 {
            let code = (bits >> (16 - len)) as i32;
            if code <= self.max_code[len as usize] {
                r.consume(len);
                return self.values[(code + self.offset[len as usize]) as usize];
            }
        }
        // No code: libjpeg (`jpeg_huff_decode`) reads on to its 17-bit sentinel and fakes a
        // zero, warning; so does this decoder.
        r.consume(17);
        0
    }
}
