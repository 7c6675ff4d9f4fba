//! Shared files for the page: `FileEncryptor` (a fresh key per file, chunks by index so an
//! upload resumes from any chunk) and `FileDecryptor` (verifies a download while it streams),
//! both over tern-core's format v1 (`tern_core::files`).
//!
//! Sending: `new FileEncryptor(file.size)`, `POST /uploads {size: encryptedSize(),
//! content_type: file.type}`, PATCH `header()` then `encryptChunk(i, bytes of
//! chunkFileStart(i)..chunkFileEnd(i))` for i in 0..chunkCount() (resume at the server's offset
//! with `chunkAt(offset)`), finish, then `fileBody(upload_id, name, mime, caption)` is the
//! payload of an outbox entry with content type `fileContentType()`, and `fileRef(body)` the
//! one entry of its Send frame's `files`.
//!
//! Receiving: a decrypted message's `file` (the FileBody JSON) → `new FileDecryptor(body)`,
//! `push(bytes)` for each piece of the download (plaintext out, each chunk authenticated),
//! and only when `finish()` returns is the file complete and its SHA-256 right. Verification
//! failures throw an `Error` whose `name` is `FileTamperedError`, `FileTruncatedError` or
//! `FileHashMismatchError`.

use tern_core::files::{
    self, FILE_CONTENT_TYPE, FileBody, FileDecryptor as CoreDecryptor,
    FileEncryptor as CoreEncryptor, FileError,
};
use wasm_bindgen::prelude::*;

use crate::js::{Fail, JsResult, fail, num, parse, to_json, uint};

/// A format error as a JS `Error`, named for the failures the page must tell apart.
fn file_fail(e: FileError) -> Fail {
    let name = match e {
        FileError::Tampered { .. }
        | FileError::BadPadding
        | FileError::UnsupportedVersion(_)
        | FileError::TrailingBytes => "FileTamperedError",
        FileError::Truncated { .. } => "FileTruncatedError",
        FileError::HashMismatch => "FileHashMismatchError",
        _ => return fail(e.to_string()),
    };
    Fail::named(name, e.to_string())
}

/// The app content type of a file message (`"tern.file"`).
#[wasm_bindgen(js_name = fileContentType)]
pub fn file_content_type() -> String {
    FILE_CONTENT_TYPE.to_string()
}

/// Bytes of the encrypted object of a `size`-byte file (what the upload declares).
#[wasm_bindgen(js_name = fileEncryptedSize)]
pub fn file_encrypted_size(size: f64) -> JsResult<f64> {
    Ok(num(files::encrypted_len(uint(size, "size")?)))
}

/// The FileRef JSON (`{"file_id","size","content_type"}`) a Send frame names for a file
/// message, from its FileBody JSON.
#[wasm_bindgen(js_name = fileRef)]
pub fn file_ref(body_json: &str) -> JsResult<String> {
    let body = FileBody::from_json(body_json.as_bytes()).map_err(file_fail)?;
    to_json(&body.file_ref())
}

/// Encrypts one file under a fresh random key.
#[wasm_bindgen]
pub struct FileEncryptor {
    inner: CoreEncryptor,
}

#[wasm_bindgen]
impl FileEncryptor {
    /// `size`: the file's bytes (`File.size`).
    #[wasm_bindgen(constructor)]
    pub fn new(size: f64) -> JsResult<FileEncryptor> {
        let inner = CoreEncryptor::generate(uint(size, "size")?).map_err(file_fail)?;
        Ok(FileEncryptor { inner })
    }

    /// The 20 bytes the object starts with.
    pub fn header(&self) -> Vec<u8> {
        self.inner.header().to_vec()
    }

    #[wasm_bindgen(js_name = encryptedSize)]
    pub fn encrypted_size(&self) -> f64 {
        num(self.inner.layout().encrypted_len())
    }

    #[wasm_bindgen(js_name = chunkCount)]
    pub fn chunk_count(&self) -> f64 {
        num(self.inner.layout().chunk_count())
    }

    /// First file byte chunk `index` carries.
    #[wasm_bindgen(js_name = chunkFileStart)]
    pub fn chunk_file_start(&self, index: f64) -> JsResult<f64> {
        Ok(num(self
            .inner
            .layout()
            .chunk_file_range(uint(index, "index")?)
            .start))
    }

    /// One past the last file byte chunk `index` carries (equal to the start for a chunk of
    /// padding only).
    #[wasm_bindgen(js_name = chunkFileEnd)]
    pub fn chunk_file_end(&self, index: f64) -> JsResult<f64> {
        Ok(num(self
            .inner
            .layout()
            .chunk_file_range(uint(index, "index")?)
            .end))
    }

    /// Offset of chunk `index` in the encrypted object.
    #[wasm_bindgen(js_name = chunkOffset)]
    pub fn chunk_offset(&self, index: f64) -> JsResult<f64> {
        Ok(num(self
            .inner
            .layout()
            .chunk_cipher_offset(uint(index, "index")?)))
    }

    /// Where an upload resumes from the server's `offset`: `[chunk index, bytes of that
    /// encrypted chunk already sent]`, or `undefined` when the offset is inside the header
    /// (send the header from it first) or at/after the end.
    #[wasm_bindgen(js_name = chunkAt)]
    pub fn chunk_at(&self, offset: f64) -> JsResult<Option<Vec<f64>>> {
        Ok(self
            .inner
            .layout()
            .chunk_at(uint(offset, "offset")?)
            .map(|(index, within)| vec![num(index), within as f64]))
    }

    /// Encrypts chunk `index`; `plaintext` = the file's bytes `chunkFileStart(index) ..
    /// chunkFileEnd(index)` exactly (the padding is added here). Any order, any number of
    /// times (the same bytes each time).
    #[wasm_bindgen(js_name = encryptChunk)]
    pub fn encrypt_chunk(&mut self, index: f64, plaintext: &[u8]) -> JsResult<Vec<u8>> {
        self.inner
            .encrypt_chunk(uint(index, "index")?, plaintext)
            .map_err(file_fail)
    }

    /// The file's SHA-256 once every chunk was encrypted in order from 0, else `undefined`.
    pub fn digest(&self) -> Option<Vec<u8>> {
        self.inner.digest().map(|d| d.to_vec())
    }

    /// The file key, standard base64 (as in the FileBody JSON).
    #[wasm_bindgen(js_name = keyBase64)]
    pub fn key_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.inner.key().key_bytes())
    }

    /// The FileBody JSON of the finished upload `file_id` (the upload id, a UUID): the payload
    /// of the file message. Throws before the in-order pass is complete or past the limits
    /// (name 255 bytes, mime 127, caption 4 KiB).
    #[wasm_bindgen(js_name = fileBody)]
    pub fn file_body(
        &self,
        file_id: &str,
        name: &str,
        mime: &str,
        caption: &str,
    ) -> JsResult<String> {
        let sha256 = self
            .inner
            .digest()
            .ok_or_else(|| fail("the file was not encrypted in order from chunk 0 yet"))?;
        let body = FileBody {
            file_id: parse(file_id, "file_id")?,
            key: *self.inner.key().key_bytes(),
            sha256,
            name: name.to_string(),
            mime: mime.to_string(),
            size: self.inner.layout().size(),
            caption: caption.to_string(),
        };
        body.validate().map_err(file_fail)?;
        to_json(&body)
    }
}

/// Decrypts and verifies one download.
#[wasm_bindgen]
pub struct FileDecryptor {
    inner: Option<CoreDecryptor>,
}

#[wasm_bindgen]
impl FileDecryptor {
    /// `body_json`: the message's FileBody JSON (key, size and SHA-256 come from it).
    #[wasm_bindgen(constructor)]
    pub fn new(body_json: &str) -> JsResult<FileDecryptor> {
        let body = FileBody::from_json(body_json.as_bytes()).map_err(file_fail)?;
        let inner = CoreDecryptor::new(body.key, body.size, body.sha256).map_err(file_fail)?;
        Ok(FileDecryptor { inner: Some(inner) })
    }

    /// The next downloaded bytes (any size); returns the plaintext of the chunks they
    /// completed. Not trusted as the file until `finish()` returns.
    pub fn push(&mut self, bytes: &[u8]) -> JsResult<Vec<u8>> {
        self.inner
            .as_mut()
            .ok_or_else(|| fail("the decryptor was finished"))?
            .push(bytes)
            .map_err(file_fail)
    }

    /// Encrypted bytes taken so far (resume a broken download with `Range: bytes=N-`).
    pub fn consumed(&self) -> f64 {
        self.inner.as_ref().map_or(0.0, |d| num(d.consumed()))
    }

    /// Throws unless the whole object arrived and the SHA-256 matches.
    pub fn finish(&mut self) -> JsResult<()> {
        self.inner
            .take()
            .ok_or_else(|| fail("the decryptor was finished"))?
            .finish()
            .map_err(file_fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_then_decrypt_through_the_facade() {
        let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = FileEncryptor::new(plain.len() as f64).expect("encryptor");
        let mut object = enc.header();
        let chunks = enc.chunk_count() as u64;
        assert!(
            enc.file_body("00000000-0000-0000-0000-000000000001", "a", "b", "")
                .is_err()
        );
        for i in 0..chunks {
            let (s, e) = (
                enc.chunk_file_start(i as f64).expect("start") as usize,
                enc.chunk_file_end(i as f64).expect("end") as usize,
            );
            object.extend(enc.encrypt_chunk(i as f64, &plain[s..e]).expect("chunk"));
        }
        assert_eq!(object.len() as f64, enc.encrypted_size());
        let body = enc
            .file_body(
                "00000000-0000-0000-0000-000000000001",
                "a.bin",
                "application/octet-stream",
                "",
            )
            .expect("body");
        let refs = file_ref(&body).expect("ref");
        assert!(
            refs.contains(&format!("\"size\":{}", object.len())),
            "{refs}"
        );
        let mut dec = FileDecryptor::new(&body).expect("decryptor");
        let mut out = Vec::new();
        for piece in object.chunks(7_777) {
            out.extend(dec.push(piece).expect("push"));
        }
        dec.finish().expect("verified");
        assert_eq!(out, plain);

        let mut dec = FileDecryptor::new(&body).expect("decryptor");
        dec.push(&object[..object.len() - 1]).expect("push");
        let e = dec.finish().expect_err("truncated");
        assert_eq!(e.1, Some("FileTruncatedError"));
        let mut bad = object.clone();
        bad[100] ^= 1;
        let mut dec = FileDecryptor::new(&body).expect("decryptor");
        assert_eq!(
            dec.push(&bad).expect_err("tampered").1,
            Some("FileTamperedError")
        );
    }
}
