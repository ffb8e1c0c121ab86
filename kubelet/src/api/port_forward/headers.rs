//! SPDY/3 header blocks: name/value pairs, compressed by one zlib stream per direction that
//! lives as long as the connection and starts from the protocol's preset dictionary.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("spdy3-dictionary.bin");

/// The most a header block may inflate to, and the most pairs it may hold: a port forward's
/// streams carry three short headers.
const MAX_BLOCK: usize = 16 * 1024;
const MAX_PAIRS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub(super) enum HeaderError {
    #[error("a header block inflates past {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("a header block is not valid zlib data: {0}")]
    Corrupt(String),
    #[error("a header block's name/value pairs are malformed")]
    Malformed,
}

/// The client's header blocks, in the order they arrive.
pub(super) struct HeaderInflater {
    zlib: Decompress,
}

impl HeaderInflater {
    pub(super) fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// The name/value pairs of one frame's header block.
    pub(super) fn pairs(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, HeaderError> {
        decode_pairs(&self.inflate(block)?)
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(256);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve((MAX_BLOCK - out.len()).min(1024));
            }
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let result = self
                .zlib
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            // zlib counts what it took even when it stops to ask for the dictionary.
            let taken = usize::try_from(self.zlib.total_in() - in_before)
                .map_err(|_| HeaderError::TooLarge)?;
            input = input.get(taken..).unwrap_or_default();
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(HeaderError::Corrupt(
                        "the connection's zlib stream ended".into(),
                    ));
                }
                Ok(_) => {}
                Err(err) if err.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(DICTIONARY)
                        .map_err(|err| HeaderError::Corrupt(err.to_string()))?;
                    continue;
                }
                Err(err) => return Err(HeaderError::Corrupt(err.to_string())),
            }
            let progressed = taken > 0 || out.len() > out_before;
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed {
                return Err(HeaderError::Corrupt("a header block is truncated".into()));
            }
        }
    }
}

/// This server's header blocks, in the order they are written.
pub(super) struct HeaderDeflater {
    zlib: Compress,
}

impl HeaderDeflater {
    pub(super) fn new() -> Result<Self, HeaderError> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(DICTIONARY)
            .map_err(|err| HeaderError::Corrupt(err.to_string()))?;
        Ok(Self { zlib })
    }

    /// One frame's header block holding `pairs`.
    pub(super) fn block(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<u8>, HeaderError> {
        let raw = encode_pairs(pairs)?;
        let mut input = &raw[..];
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|err| HeaderError::Corrupt(err.to_string()))?;
            let taken = usize::try_from(self.zlib.total_in() - before)
                .map_err(|_| HeaderError::TooLarge)?;
            input = input.get(taken..).unwrap_or_default();
            // A sync flush is complete when it leaves room in the output.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(256);
        }
    }
}

fn encode_pairs(pairs: &[(&str, &str)]) -> Result<Vec<u8>, HeaderError> {
    let length = |n: usize| u32::try_from(n).map_err(|_| HeaderError::TooLarge);
    let mut raw = Vec::new();
    raw.extend_from_slice(&length(pairs.len())?.to_be_bytes());
    for (name, value) in pairs {
        for text in [name, value] {
            raw.extend_from_slice(&length(text.len())?.to_be_bytes());
            raw.extend_from_slice(text.as_bytes());
        }
    }
    Ok(raw)
}

fn decode_pairs(mut raw: &[u8]) -> Result<Vec<(String, String)>, HeaderError> {
    fn take<'a>(raw: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        let (head, rest) = raw.split_at_checked(n).ok_or(HeaderError::Malformed)?;
        *raw = rest;
        Ok(head)
    }
    fn number(raw: &mut &[u8]) -> Result<u32, HeaderError> {
        let bytes = take(raw, 4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    fn text(raw: &mut &[u8]) -> Result<String, HeaderError> {
        let len = usize::try_from(number(raw)?).map_err(|_| HeaderError::Malformed)?;
        String::from_utf8(take(raw, len)?.to_vec()).map_err(|_| HeaderError::Malformed)
    }
    let count = number(&mut raw)?;
    if count > MAX_PAIRS {
        return Err(HeaderError::Malformed);
    }
    let mut pairs = Vec::new();
    for _ in 0..count {
        // Names are lower case in SPDY/3; several values of one name are joined by NULs.
        let name = text(&mut raw)?.to_ascii_lowercase();
        let value = text(&mut raw)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The first value of header `name` (lower case).
pub(super) fn value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.split('\0').next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        // Its Adler-32 is the dictionary ID every SPDY/3 zlib stream names.
        let mut deflater = HeaderDeflater::new().unwrap();
        let block = deflater.block(&[]).unwrap();
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn blocks_share_one_stream_each_way() {
        let mut deflater = HeaderDeflater::new().unwrap();
        let mut inflater = HeaderInflater::new();
        let blocks = [
            vec![
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
            vec![("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
            vec![],
        ];
        for pairs in blocks {
            let block = deflater.block(&pairs).unwrap();
            let got = inflater.pairs(&block).unwrap();
            let got: Vec<(&str, &str)> =
                got.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            assert_eq!(got, pairs);
        }
    }

    #[test]
    fn names_are_read_lower_case_and_the_first_value_counts() {
        let mut deflater = HeaderDeflater::new().unwrap();
        let mut inflater = HeaderInflater::new();
        let block = deflater.block(&[("Port", "80\u{0}81")]).unwrap();
        let pairs = inflater.pairs(&block).unwrap();
        assert_eq!(value(&pairs, "port"), Some("80"));
        assert_eq!(value(&pairs, "streamtype"), None);
    }

    #[test]
    fn garbage_and_bombs_are_errors() {
        assert!(HeaderInflater::new().pairs(b"not zlib at all").is_err());
        // A pair count past the bound.
        let mut raw = 1000u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0; 8]);
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(DICTIONARY).unwrap();
        let mut block = Vec::with_capacity(1024);
        zlib.compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        assert!(matches!(
            HeaderInflater::new().pairs(&block),
            Err(HeaderError::Malformed)
        ));
        // A block that inflates to far more than a header block can be.
        let huge = vec![b'a'; 1 << 20];
        let mut block = Vec::with_capacity(1 << 20);
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(DICTIONARY).unwrap();
        zlib.compress_vec(&huge, &mut block, FlushCompress::Sync)
            .unwrap();
        assert!(matches!(
            HeaderInflater::new().pairs(&block),
            Err(HeaderError::TooLarge)
        ));
        // A length that runs past the block.
        assert!(matches!(
            decode_pairs(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']),
            Err(HeaderError::Malformed)
        ));
    }
}
