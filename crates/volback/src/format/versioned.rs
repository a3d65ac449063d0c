//! Versioned JSON objects: every JSON object volback stores names its format and version.

use crate::error::{Error, Result};

/// Decodes a JSON object stored under `key` that carries `"format": format` and
/// `"version": version` (every JSON object volback stores does): a parse failure is `Corrupt` at
/// the failing byte (the documents are single-line), another format is `Corrupt`, another
/// version is `UnsupportedVersion`, then the fields are deserialised into `T`.
pub fn decode_versioned_json<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
    what: &'static str,
    format: &str,
    version: u64,
) -> Result<T> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupt(
            key,
            e.column().saturating_sub(1) as u64,
            format!("{what} does not parse: {e}"),
        )
    })?;
    if v.get("format").and_then(|f| f.as_str()) != Some(format) {
        return Err(Error::corrupt(
            key,
            0,
            format!("not a volback {what} (format field is not '{format}')"),
        ));
    }
    let found = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
    if found != version {
        return Err(Error::UnsupportedVersion {
            key: key.to_string(),
            what,
            found,
            supported: version,
        });
    }
    serde_json::from_value(v).map_err(|e| Error::corrupt(key, 0, format!("{what} fields: {e}")))
}

/// The stored JSON of `value` (pretty for objects people read, such as `config`). A value that
/// does not serialise is an error, never an empty object written in its place.
pub fn encode_json(what: &str, value: &impl serde::Serialize, pretty: bool) -> Result<Vec<u8>> {
    let r = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    r.map_err(|e| crate::error::Error::Internal(format!("cannot encode the {what}: {e}")))
}

/// Lower-case hex of `bytes` (key slots and the encrypted config store binary fields so).
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The bytes of lower- or upper-case hex `s`; `None` if it is not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}
