//! The one on-disk record format. Every value the agent stores in sled is a frame:
//!
//! ```text
//! offset size  field
//! 0      2     magic 0xF1 0xD1
//! 2      1     format version (1)
//! 3      1     kind (see [`Kind`])
//! 4      4     payload length, u32 big-endian
//! 8      4     CRC-32 (IEEE) of bytes 2..8 and the payload, u32 big-endian
//! 12     n     payload = key length (u16 big-endian) + the sled key + the body
//! ```
//!
//! Why the key is repeated inside the frame and why there is a magic: sled stores
//! values verbatim, so when sled's own files are damaged `state repair` can still
//! find every intact frame by scanning the raw files ([`carve`]) and knows where
//! each belongs without trusting sled's index. A frame whose checksum fails is never
//! returned as data.

/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
pub const MAGIC: [u8; 2] = [0xF1, 0xD1];
pub const FORMAT_VERSION: u8 = 1;
/// No record we write comes near this; a larger length means a damaged header.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// What a frame holds; also names the sled tree it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An outbox record (tree `outbox`, key = seq u64 BE).
    Outbox = 1,
    /// One batch of the ingest log (tree `ingest`, key = position u64 BE).
    Ingest = 2,
    /// A checkpoint (tree `checkpoints`, key = id u64 BE).
    Checkpoint = 3,
    /// A counter or cursor (tree `meta`, key = its name, body = u64 BE).
    Meta = 4,
    /// A keyed state value with optional expiry (tree `kv`).
    Kv = 5,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Outbox,
        Kind::Ingest,
        Kind::Checkpoint,
        Kind::Meta,
        Kind::Kv,
    ];

    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    pub fn tree(self) -> &'static str {
        match self {
            Kind::Outbox => "outbox",
            Kind::Ingest => "ingest",
            Kind::Checkpoint => "checkpoints",
            Kind::Meta => "meta",
            Kind::Kv => "kv",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{0} bytes is shorter than the frame header")]
    Short(usize),
    #[error("bad magic")]
    Magic,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("header says {want} payload bytes, {got} present")]
    Length { want: usize, got: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("frame is for key {found:02x?}, stored under {expected:02x?}")]
    KeyMismatch { expected: Vec<u8>, found: Vec<u8> },
    #[error("expected a {expected:?} record, found {found:?}")]
    WrongKind { expected: Kind, found: Kind },
}

/// A decoded, checksum-verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub key: &'a [u8],
    pub body: &'a [u8],
}

pub fn encode(kind: Kind, key: &[u8], body: &[u8]) -> Vec<u8> {
    let payload_len = 2 + key.len() + body.len();
    let mut out = Vec::with_capacity(HEADER_LEN + payload_len);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(body);
    let crc = checksum(&out);
    out[8..12].copy_from_slice(&crc.to_be_bytes());
    out
}

fn checksum(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[2..8]);
    h.update(&frame[HEADER_LEN..]);
    h.finalize()
}

/// Decodes exactly one frame spanning all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (frame, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(FrameError::Length {
            want: used - HEADER_LEN,
            got: bytes.len() - HEADER_LEN,
        });
    }
    Ok(frame)
}

/// Decodes a value read from sled under `key`, checking kind and key.
pub fn decode_stored<'a>(
    expected: Kind,
    key: &[u8],
    bytes: &'a [u8],
) -> Result<&'a [u8], FrameError> {
    let f = decode(bytes)?;
    if f.kind != expected {
        return Err(FrameError::WrongKind {
            expected,
            found: f.kind,
        });
    }
    if f.key != key {
        return Err(FrameError::KeyMismatch {
            expected: key.to_vec(),
            found: f.key.to_vec(),
        });
    }
    Ok(f.body)
}

/// Decodes the frame at the start of `bytes`, returning it and its length.
fn decode_prefix(bytes: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Short(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(FrameError::Magic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(FrameError::Version(bytes[2]));
    }
    let kind = Kind::from_u8(bytes[3]).ok_or(FrameError::Kind(bytes[3]))?;
    let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if !(2..=MAX_PAYLOAD).contains(&len) || bytes.len() < HEADER_LEN + len {
        return Err(FrameError::Length {
            want: len,
            got: bytes.len() - HEADER_LEN,
        });
    }
    let frame = &bytes[..HEADER_LEN + len];
    let want = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if checksum(frame) != want {
        return Err(FrameError::Checksum);
    }
    let payload = &frame[HEADER_LEN..];
    let key_len = u16::from_be_bytes([payload[0], payload[1]]) as usize;
    if 2 + key_len > payload.len() {
        return Err(FrameError::Length {
            want: key_len,
            got: payload.len() - 2,
        });
    }
    Ok((
        Frame {
            kind,
            key: &payload[2..2 + key_len],
            body: &payload[2 + key_len..],
        },
        HEADER_LEN + len,
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarvedFrame {
    pub kind: Kind,
    pub key: Vec<u8>,
    /// The whole frame, as it would be stored in sled.
    pub bytes: Vec<u8>,
    /// Where it starts in the scanned buffer.
    pub offset: usize,
}

/// What a raw scan of damaged files found.
#[derive(Debug, Default)]
pub struct Carved {
    /// Every intact frame, in file order.
    pub frames: Vec<CarvedFrame>,
    /// Places that start like a frame (magic, version, known kind, sane length)
    /// but fail their checksum.
    pub damaged: usize,
}

/// Finds every intact frame in `bytes`, whatever surrounds it.
pub fn carve(bytes: &[u8], into: &mut Carved) {
    let mut i = 0;
    while i + HEADER_LEN <= bytes.len() {
        let Some(off) = find_magic(&bytes[i..]) else {
            break;
        };
        let at = i + off;
        match decode_prefix(&bytes[at..]) {
            Ok((f, used)) => {
                into.frames.push(CarvedFrame {
                    kind: f.kind,
                    key: f.key.to_vec(),
                    bytes: bytes[at..at + used].to_vec(),
                    offset: at,
                });
                i = at + used;
            }
            Err(FrameError::Checksum) => {
                into.damaged += 1;
                i = at + 1;
            }
            Err(_) => i = at + 1,
        }
    }
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == MAGIC)
}

pub fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_big_endian_and_versioned() {
        let f = encode(Kind::Meta, b"k", &7u64.to_be_bytes());
        assert_eq!(&f[0..4], &[0xF1, 0xD1, 1, 4]);
        assert_eq!(&f[4..8], &(2u32 + 1 + 8).to_be_bytes());
        assert_eq!(&f[12..15], &[0, 1, b'k']);
        let d = decode(&f).unwrap();
        assert_eq!(
            (d.kind, d.key, d.body),
            (Kind::Meta, &b"k"[..], &7u64.to_be_bytes()[..])
        );
    }

    proptest! {
        /// Any single flipped bit is caught, never returned as data.
        #[test]
        fn any_bit_flip_is_detected(key in proptest::collection::vec(any::<u8>(), 0..16),
                                    body in proptest::collection::vec(any::<u8>(), 0..200),
                                    bit in any::<usize>()) {
            let mut f = encode(Kind::Outbox, &key, &body);
            let bit = bit % (f.len() * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&f).is_err());
        }

        /// Carving finds every intact frame between arbitrary bytes and skips a damaged one.
        #[test]
        fn carve_finds_intact_frames(noise in proptest::collection::vec(any::<u8>(), 0..64),
                                     bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..8),
                                     damage in any::<prop::sample::Index>()) {
            let mut file = noise.clone();
            let frames: Vec<Vec<u8>> = bodies.iter().enumerate()
                .map(|(i, b)| encode(Kind::Ingest, &(i as u64).to_be_bytes(), b)).collect();
            let damaged = damage.index(frames.len());
            for (i, f) in frames.iter().enumerate() {
                let mut f = f.clone();
                if i == damaged {
                    let last = f.len() - 1;
                    f[last] ^= 0x5a;
                }
                file.extend_from_slice(&f);
                file.extend_from_slice(&noise);
            }
            let mut c = Carved::default();
            carve(&file, &mut c);
            let keys: Vec<u64> = c.frames.iter().filter(|f| f.kind == Kind::Ingest && f.key.len() == 8)
                .map(|f| be_u64(&f.key).unwrap()).collect();
            for i in 0..frames.len() as u64 {
                prop_assert_eq!(keys.contains(&i), i != damaged as u64);
            }
        }
    }
}
