//! The binary tensor extension: a JSON header of `Inference-Header-Content-Length` bytes followed
//! by raw tensor bytes; BYTES elements as a 4-byte little-endian length and the bytes.

use bytes::Bytes;

use crate::error::Error;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Splits a request body into its JSON header and binary section.
pub fn split(body: Bytes, header_length: Option<usize>) -> Result<(Bytes, Bytes), Error> {
    match header_length {
        None => Ok((body, Bytes::new())),
        Some(n) if n <= body.len() => Ok((body.slice(..n), body.slice(n..))),
        Some(n) => Err(Error::BadRequest(format!(
            "{HEADER_LENGTH} is {n} but the body has only {} bytes",
            body.len()
        ))),
    }
}

/// Reads consecutive tensors from the binary section.
pub struct BinaryReader {
    data: Bytes,
    offset: usize,
}

impl BinaryReader {
    pub fn new(data: Bytes) -> Self {
        Self { data, offset: 0 }
    }

    /// The next `size` bytes, for the input `name`.
    pub fn take(&mut self, size: usize, name: &str) -> Result<Bytes, Error> {
        let end = self
            .offset
            .checked_add(size)
            .filter(|e| *e <= self.data.len());
        let Some(end) = end else {
            return Err(Error::InvalidTensor(format!(
                "input {name:?}: binary_data_size {size} runs past the {} bytes after the JSON header",
                self.data.len()
            )));
        };
        let out = self.data.slice(self.offset..end);
        self.offset = end;
        Ok(out)
    }

    /// Bytes no input claimed (a malformed request).
    pub fn unread(&self) -> usize {
        self.data.len() - self.offset
    }
}

/// Little-endian FP32 values.
pub fn f32s(bytes: &[u8], name: &str) -> Result<Vec<f32>, Error> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::InvalidTensor(format!(
            "input {name:?}: {} bytes is not a whole number of FP32 values",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// BYTES elements: each a 4-byte little-endian length, then that many bytes.
pub fn elements(bytes: &Bytes, name: &str) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let bad = || {
            Error::InvalidTensor(format!(
                "input {name:?}: malformed BYTES element at offset {at} (4-byte little-endian length, then the bytes)"
            ))
        };
        let header = bytes.get(at..at + 4).ok_or_else(bad)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(bad)?;
        out.push(bytes.slice(start..end));
        at = end;
    }
    Ok(out)
}

/// Serialises BYTES elements.
pub fn encode_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_refuse_overruns() {
        let encoded = Bytes::from(encode_elements([b"ab".as_slice(), b"", b"xyz"]));
        let decoded = elements(&encoded, "x").unwrap();
        assert_eq!(decoded, [&b"ab"[..], b"", b"xyz"]);
        let mut cut = encoded.to_vec();
        cut.pop();
        assert!(elements(&Bytes::from(cut), "x").is_err());
        assert!(elements(&Bytes::from_static(&[1, 0]), "x").is_err());
        assert!(elements(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]), "x").is_err());
    }

    #[test]
    fn splits_the_header_and_reads_tensors_in_order() {
        let body = Bytes::from_static(b"{}\x00\x00\x80\x3f\x01");
        let (json, rest) = split(body.clone(), Some(2)).unwrap();
        assert_eq!(&json[..], b"{}");
        let mut reader = BinaryReader::new(rest);
        assert_eq!(f32s(&reader.take(4, "a").unwrap(), "a").unwrap(), [1.0]);
        assert_eq!(reader.unread(), 1);
        assert!(reader.take(2, "b").is_err());
        assert!(split(body, Some(99)).is_err());
        assert!(f32s(&[0, 0, 0], "a").is_err());
    }
}
