//! The binary tensor extension: a JSON header of `Inference-Header-Content-Length` bytes followed
//! by the tensors' bytes, one after another (their layout: `TensorData::from_raw`).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_header_and_reads_tensors_in_order() {
        let body = Bytes::from_static(b"{}\x00\x00\x80\x3f\x01");
        let (json, rest) = split(body.clone(), Some(2)).unwrap();
        assert_eq!(&json[..], b"{}");
        let mut reader = BinaryReader::new(rest);
        assert_eq!(&reader.take(4, "a").unwrap()[..], b"\x00\x00\x80\x3f");
        assert_eq!(reader.unread(), 1);
        assert!(reader.take(2, "b").is_err());
        assert!(split(body, Some(99)).is_err());
    }
}
