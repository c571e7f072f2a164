//! The on-disk frame of one record, and a streaming scanner over a run of frames.
//!
//! ```text
//! [0..4)  u32 LE  payload length; bit 31 set = last record of its batch
//! [4..8)  u32 LE  CRC32 over bytes [0..4) and the payload
//! [8.. )          payload
//! ```
//!
//! The checksum covers the length word too, so a torn or garbled length (or batch marker) is
//! caught like a garbled payload; a run of zeroes never verifies because CRC32 of four zero
//! bytes is not zero.

use std::io::{self, Read};

/// Bytes of a frame header.
pub(crate) const HEADER_LEN: u64 = 8;

/// Bit of the length word marking the last record of a batch.
const BATCH_END: u32 = 1 << 31;

/// Largest payload a frame can carry (the length word loses its top bit to the batch marker).
pub(crate) const MAX_PAYLOAD: usize = (BATCH_END - 1) as usize;

/// Size on disk of a frame carrying `payload_len` bytes.
pub(crate) fn frame_len(payload_len: usize) -> u64 {
    HEADER_LEN + payload_len as u64
}

/// The checksum stored in a frame: over the length word (with its batch marker) and payload.
fn checksum(len_word: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_word.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends the frame of `payload` to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, payload: &[u8], batch_end: bool) {
    debug_assert!(
        payload.len() <= MAX_PAYLOAD,
        "caller checks the record size"
    );
    let len_word = payload.len() as u32 | if batch_end { BATCH_END } else { 0 };
    buf.extend_from_slice(&len_word.to_le_bytes());
    buf.extend_from_slice(&checksum(len_word, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    len_word: u32,
    crc: u32,
}

impl Header {
    /// Decodes the eight header bytes.
    pub(crate) fn decode(bytes: [u8; HEADER_LEN as usize]) -> Self {
        let [a, b, c, d, e, f, g, h] = bytes;
        Self {
            len_word: u32::from_le_bytes([a, b, c, d]),
            crc: u32::from_le_bytes([e, f, g, h]),
        }
    }

    /// Payload length in bytes.
    pub(crate) fn payload_len(self) -> u64 {
        u64::from(self.len_word & !BATCH_END)
    }

    /// Whether this record closes its batch.
    pub(crate) fn batch_end(self) -> bool {
        self.len_word & BATCH_END != 0
    }

    /// Whether `payload` is what this header was written for.
    pub(crate) fn verifies(self, payload: &[u8]) -> bool {
        debug_assert_eq!(payload.len() as u64, self.payload_len());
        checksum(self.len_word, payload) == self.crc
    }
}

/// A frame the scanner read and verified.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScannedFrame {
    /// Offset of the frame header.
    pub(crate) offset: u64,
    /// Whether the frame closes its batch.
    pub(crate) batch_end: bool,
}

/// Why a scan stopped before its end.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The bytes at `offset` are not a whole, valid frame.
    Invalid {
        /// Offset of the frame that did not verify.
        offset: u64,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// Reading failed.
    Io(io::Error),
}

/// Reads frames one at a time from `reader`, which is positioned at `offset`, up to byte `end`.
///
/// It streams: memory use is one payload, whatever the size of the segment.
pub(crate) struct FrameScanner<R> {
    reader: R,
    offset: u64,
    end: u64,
}

impl<R: Read> FrameScanner<R> {
    /// A scanner over bytes `[offset, end)`; `reader` must be positioned at `offset`.
    pub(crate) fn new(reader: R, offset: u64, end: u64) -> Self {
        debug_assert!(offset <= end);
        Self {
            reader,
            offset,
            end,
        }
    }

    /// Offset of the next frame (the end of the last frame read).
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next frame's payload into `payload`; `None` at the end of the range.
    pub(crate) fn next_into(
        &mut self,
        payload: &mut Vec<u8>,
    ) -> Result<Option<ScannedFrame>, ScanError> {
        let offset = self.offset;
        let remaining = self.end - offset;
        if remaining == 0 {
            return Ok(None);
        }
        let invalid = |reason| ScanError::Invalid { offset, reason };
        if remaining < HEADER_LEN {
            return Err(invalid("partial frame header"));
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        self.read_exact(&mut raw, offset)?;
        let header = Header::decode(raw);
        let len = header.payload_len();
        if len > remaining - HEADER_LEN {
            return Err(invalid("frame length runs past the end of the segment"));
        }
        payload.resize(len as usize, 0);
        self.read_exact(payload, offset)?;
        if !header.verifies(payload) {
            return Err(invalid("checksum mismatch"));
        }
        self.offset += HEADER_LEN + len;
        Ok(Some(ScannedFrame {
            offset,
            batch_end: header.batch_end(),
        }))
    }

    /// `read_exact`, reporting a file that ended early (shrunk under us) as an invalid frame.
    fn read_exact(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ScanError> {
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ScanError::Invalid {
                    offset,
                    reason: "segment ended inside a frame",
                }
            } else {
                ScanError::Io(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(bytes: &[u8]) -> (Vec<(Vec<u8>, bool)>, Option<ScanError>) {
        let mut scanner = FrameScanner::new(bytes, 0, bytes.len() as u64);
        let mut out = Vec::new();
        let mut payload = Vec::new();
        loop {
            match scanner.next_into(&mut payload) {
                Ok(Some(frame)) => out.push((payload.clone(), frame.batch_end)),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn frames_round_trip_with_their_batch_marker() {
        let mut buf = Vec::new();
        encode(&mut buf, b"alpha", false);
        encode(&mut buf, b"", true);
        assert_eq!(buf.len() as u64, frame_len(5) + frame_len(0));
        let (frames, err) = scan_all(&buf);
        assert!(err.is_none());
        assert_eq!(frames, vec![(b"alpha".to_vec(), false), (Vec::new(), true)]);
    }

    #[test]
    fn zeroes_and_flipped_markers_do_not_verify() {
        let (frames, err) = scan_all(&[0u8; 16]);
        assert!(frames.is_empty());
        assert!(matches!(err, Some(ScanError::Invalid { offset: 0, .. })));

        let mut buf = Vec::new();
        encode(&mut buf, b"payload", true);
        buf[3] ^= 0x80; // clear the batch marker
        let (frames, err) = scan_all(&buf);
        assert!(frames.is_empty());
        assert!(matches!(
            err,
            Some(ScanError::Invalid {
                reason: "checksum mismatch",
                ..
            })
        ));
    }
}
