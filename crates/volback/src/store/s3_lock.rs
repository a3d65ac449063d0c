//! S3 Object Lock and object versions: the requests object_store does not make.
//!
//! A container with Object Lock lives in a bucket created with Object Lock enabled, which S3
//! makes versioned. Five requests are needed beyond object_store's: PutObjectRetention and
//! GetObjectRetention (`?retention`), ListObjectVersions (`?versions`), DeleteObject with a
//! `versionId` (a plain DELETE in a versioned bucket only hides an object behind a delete
//! marker: its bytes stay, and so does their cost) and GetObjectLockConfiguration
//! (`?object-lock`, to check a bucket before a locked container is created in it).
//!
//! They are signed with object_store's own SigV4 signer ([`AwsAuthorizer`]) and its credential
//! provider, and sent on an HTTP client built from the same [`ClientOptions`]: `aws-sdk-s3`
//! would double volback's build time (docs/performance.md) for five small requests.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, StatusCode};
use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, ReqwestConnector};
use quick_xml::events::Event;

use crate::error::{Error, Result};

/// Object Lock retention mode (S3's names: `GOVERNANCE`, `COMPLIANCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may delete early; everyone else may not.
    Governance,
    /// No one, the bucket's owner included, can delete a version before its date.
    Compliance,
}

impl LockMode {
    fn s3_name(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    /// Parses `governance` or `compliance` (any case).
    pub fn parse(s: &str) -> Result<LockMode> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            _ => Err(Error::Config(format!(
                "Object Lock mode '{}' must be 'governance' or 'compliance'",
                s.escape_debug()
            ))),
        }
    }
}

/// One version of an object, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub version_id: String,
    pub delete_marker: bool,
    /// The current version of its key (a delete marker may be: the key then reads as missing).
    pub latest: bool,
    pub size: u64,
}

/// What a DELETE of one version came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDelete {
    Deleted,
    /// The server refused: the version is under retention (or a legal hold).
    Retained(String),
}

/// Signed requests on one bucket.
pub(crate) struct LockApi {
    http: HttpClient,
    credentials: AwsCredentialProvider,
    region: String,
    /// `http://host:port/bucket` (path style, an endpoint) or `https://bucket.s3.region.amazonaws.com`.
    base: String,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An S3 date (`2026-12-05T10:00:00Z`, fractions allowed) as Unix seconds.
fn parse_date(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z')).ok()?;
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

pub(crate) use crate::clock::rfc3339 as format_date;

/// Every element of an XML document in order: its path (`A/B/C`) and, for text, the text
/// (`None` marks where the element starts). S3's answers here are small.
fn xml_items(body: &[u8]) -> std::result::Result<Vec<(String, Option<String>)>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                out.push((path.join("/"), None));
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                out.push((format!("{}/{name}", path.join("/")), None));
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let t = t.decode().map_err(|e| e.to_string())?;
                if !t.trim().is_empty() {
                    out.push((path.join("/"), Some(t.trim().to_string())));
                }
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

/// The text of the first element at `path`.
fn xml_text<'a>(items: &'a [(String, Option<String>)], path: &str) -> Option<&'a str> {
    items
        .iter()
        .find(|(p, t)| p == path && t.is_some())
        .and_then(|(_, t)| t.as_deref())
}

impl LockApi {
    pub(crate) fn new(
        options: &ClientOptions,
        credentials: AwsCredentialProvider,
        region: &str,
        endpoint: Option<&str>,
        bucket: &str,
    ) -> Result<LockApi> {
        let http = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| Error::Config(format!("S3 client for s3://{bucket}: {e}")))?;
        let base = match endpoint {
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        Ok(LockApi {
            http,
            credentials,
            region: region.into(),
            base,
        })
    }

    /// Sends a signed request for `full_key` (empty: the bucket) with `query`; returns the
    /// status and body. Connection failures and 5xx answers are [`Error::Transient`] (the
    /// container's retry layer repeats them).
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        full_key: &str,
        query: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let url = match (full_key.is_empty(), query.is_empty()) {
            (true, _) => format!("{}/?{query}", self.base),
            (false, true) => format!("{}/{full_key}", self.base),
            (false, false) => format!("{}/{full_key}?{query}", self.base),
        };
        let transient = |message: String| Error::Transient {
            op,
            key: full_key.to_string(),
            message,
        };
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| Error::Remote {
                op,
                location: full_key.to_string(),
                message: format!("credentials: {e}"),
            })?;
        let mut builder = http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let mut request: HttpRequest = builder
            .body(body.into())
            .map_err(|e| Error::Internal(format!("S3 request {op}: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| Error::Internal(format!("signing S3 request {op}: {e}")))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| transient(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| transient(e.to_string()))?;
        // 501 Not Implemented (a server without the feature) is an answer, not a hiccup.
        let transient_status = status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED;
        if transient_status || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(transient(format!("{status}: {}", answer(&body))));
        }
        Ok((status, body))
    }

    /// An error for an answer that was not a success.
    fn refused(op: &'static str, location: String, status: StatusCode, body: &[u8]) -> Error {
        match status {
            StatusCode::NOT_FOUND if answer(body).contains("NoSuchKey") => {
                Error::MissingObject { key: location }
            }
            _ => Error::Remote {
                op,
                location,
                message: format!("{status}: {}", answer(body)),
            },
        }
    }

    /// The elements of a successful XML answer about `location`, or the error for another.
    fn xml_answer(
        op: &'static str,
        location: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<Vec<(String, Option<String>)>> {
        if !status.is_success() {
            return Err(Self::refused(op, location.into(), status, body));
        }
        xml_items(body).map_err(|e| Error::corrupt(location, 0, e))
    }

    /// Keeps `full_key`'s current version from deletion until `until_unix`.
    pub(crate) async fn put_retention(
        &self,
        full_key: &str,
        mode: LockMode,
        until_unix: u64,
    ) -> Result<()> {
        let xml = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.s3_name(),
            format_date(until_unix)
        );
        let md5 = content_md5(xml.as_bytes());
        let (status, body) = self
            .send(
                "lock",
                Method::PUT,
                full_key,
                "retention",
                &[("content-md5", md5)],
                Bytes::from(xml),
            )
            .await?;
        if status.is_success() {
            return Ok(());
        }
        Err(Self::refused("lock", full_key.into(), status, &body))
    }

    /// The retention date of `full_key`'s current version (`None`: no retention).
    pub(crate) async fn get_retention(&self, full_key: &str) -> Result<Option<u64>> {
        let (status, body) = self
            .send(
                "read retention of",
                Method::GET,
                full_key,
                "retention",
                &[],
                Bytes::new(),
            )
            .await?;
        // No retention: AWS says NoSuchObjectLockConfiguration, Ceph
        // ObjectLockConfigurationNotFoundError.
        if status == StatusCode::NOT_FOUND && answer(&body).contains("ObjectLockConfiguration") {
            return Ok(None);
        }
        let items = Self::xml_answer("read retention of", full_key, status, &body)?;
        match xml_text(&items, "Retention/RetainUntilDate") {
            None => Ok(None),
            Some(date) => parse_date(date).map(Some).ok_or_else(|| {
                Error::corrupt(
                    full_key,
                    0,
                    format!("retention date '{date}' is not a date"),
                )
            }),
        }
    }

    /// Every version and delete marker of exactly `full_key`.
    pub(crate) async fn versions(&self, full_key: &str) -> Result<Vec<ObjectVersion>> {
        let mut all = self.versions_under(full_key).await?;
        all.retain(|v| v.key == full_key);
        Ok(all)
    }

    /// Every version and delete marker of the keys starting with `prefix`.
    pub(crate) async fn versions_under(&self, full_key: &str) -> Result<Vec<ObjectVersion>> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = format!("prefix={}&versions", encode(full_key));
            if let Some((key, version)) = &marker {
                query = format!(
                    "key-marker={}&prefix={}&version-id-marker={}&versions",
                    encode(key),
                    encode(full_key),
                    encode(version)
                );
            }
            let (status, body) = self
                .send(
                    "list versions of",
                    Method::GET,
                    "",
                    &query,
                    &[],
                    Bytes::new(),
                )
                .await?;
            let items = Self::xml_answer("list versions of", full_key, status, &body)?;
            let mut current: Option<ObjectVersion> = None;
            for (path, text) in &items {
                let entry = match path.as_str() {
                    "ListVersionsResult/Version" | "ListVersionsResult/DeleteMarker" => {
                        if text.is_none() {
                            out.extend(current.take());
                            current = Some(ObjectVersion {
                                key: String::new(),
                                version_id: String::new(),
                                delete_marker: path.ends_with("DeleteMarker"),
                                latest: false,
                                size: 0,
                            });
                        }
                        continue;
                    }
                    p => p,
                };
                if let (Some(v), Some(t)) = (current.as_mut(), text) {
                    if entry.ends_with("/Key") {
                        v.key = t.clone();
                    } else if entry.ends_with("/VersionId") {
                        v.version_id = t.clone();
                    } else if entry.ends_with("/IsLatest") {
                        v.latest = t == "true";
                    } else if entry.ends_with("/Size") {
                        v.size = t.parse().map_err(|_| {
                            Error::corrupt(full_key, 0, format!("version size '{t}'"))
                        })?;
                    }
                }
            }
            out.extend(current.take());
            if xml_text(&items, "ListVersionsResult/IsTruncated") != Some("true") {
                break;
            }
            let next = (
                xml_text(&items, "ListVersionsResult/NextKeyMarker"),
                xml_text(&items, "ListVersionsResult/NextVersionIdMarker"),
            );
            match next {
                (Some(k), Some(v)) => marker = Some((k.into(), v.into())),
                _ => {
                    return Err(Error::corrupt(
                        full_key,
                        0,
                        "truncated version listing without a next marker",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Deletes one version (or delete marker) of `full_key`.
    pub(crate) async fn delete_version(
        &self,
        full_key: &str,
        version_id: &str,
    ) -> Result<VersionDelete> {
        let query = format!("versionId={}", encode(version_id));
        let (status, body) = self
            .send(
                "delete",
                Method::DELETE,
                full_key,
                &query,
                &[],
                Bytes::new(),
            )
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(VersionDelete::Deleted);
        }
        if status == StatusCode::FORBIDDEN {
            return Ok(VersionDelete::Retained(answer(&body)));
        }
        Err(Self::refused("delete", full_key.into(), status, &body))
    }

    /// Whether the bucket keeps versions (`None`: the server would not say).
    pub(crate) async fn versioning(&self) -> Result<Option<bool>> {
        let (status, body) = self
            .send(
                "read versioning of",
                Method::GET,
                "",
                "versioning",
                &[],
                Bytes::new(),
            )
            .await?;
        if !status.is_success() {
            return Ok(None);
        }
        let Ok(items) = xml_items(&body) else {
            return Ok(None);
        };
        Ok(Some(
            xml_text(&items, "VersioningConfiguration/Status") == Some("Enabled"),
        ))
    }

    /// Whether the bucket has Object Lock enabled.
    pub(crate) async fn lock_enabled(&self) -> Result<bool> {
        let (status, body) = self
            .send(
                "read Object Lock configuration of",
                Method::GET,
                "",
                "object-lock",
                &[],
                Bytes::new(),
            )
            .await?;
        if status == StatusCode::NOT_IMPLEMENTED {
            return Ok(false); // a server without Object Lock (s3s-fs)
        }
        if status == StatusCode::NOT_FOUND {
            if answer(&body).contains("NoSuchBucket") {
                return Err(Self::refused(
                    "read Object Lock configuration of",
                    self.base.clone(),
                    status,
                    &body,
                ));
            }
            return Ok(false);
        }
        let items = Self::xml_answer(
            "read Object Lock configuration of",
            &self.base,
            status,
            &body,
        )?;
        Ok(xml_text(&items, "ObjectLockConfiguration/ObjectLockEnabled") == Some("Enabled"))
    }

    /// Creates the bucket, with Object Lock enabled if `lock` (an existing bucket of the same
    /// owner is not an error).
    pub(crate) async fn create_bucket(&self, lock: bool) -> Result<()> {
        let headers = match lock {
            true => vec![("x-amz-bucket-object-lock-enabled", "true".to_string())],
            false => Vec::new(),
        };
        let (status, body) = self
            .send("create bucket", Method::PUT, "", "", &headers, Bytes::new())
            .await?;
        if status.is_success() || answer(&body).contains("BucketAlreadyOwnedByYou") {
            return Ok(());
        }
        Err(Self::refused(
            "create bucket",
            self.base.clone(),
            status,
            &body,
        ))
    }
}

/// The server's error code and message, for errors (never a credential: S3 error bodies hold
/// none; bounded, in case a proxy answers with a page).
fn answer(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]);
    match xml_items(text.as_bytes()) {
        Ok(items) => match (
            xml_text(&items, "Error/Code"),
            xml_text(&items, "Error/Message"),
        ) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => text.trim().to_string(),
        },
        Err(_) => text.trim().to_string(),
    }
}

/// The `Content-MD5` header S3 requires on Object Lock requests.
fn content_md5(body: &[u8]) -> String {
    use base64::Engine as _;
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_listings_are_read_in_order_with_markers() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Prefix>packs/ab</Prefix><IsTruncated>false</IsTruncated>
<Version><Key>packs/ab</Key><VersionId>v2</VersionId><IsLatest>false</IsLatest></Version>
<DeleteMarker><Key>packs/ab</Key><VersionId>m1</VersionId></DeleteMarker>
<Version><Key>packs/abc</Key><VersionId>v9</VersionId></Version>
</ListVersionsResult>"#;
        let items = xml_items(xml).unwrap();
        assert_eq!(
            xml_text(&items, "ListVersionsResult/IsTruncated"),
            Some("false")
        );
        assert_eq!(
            xml_text(&items, "ListVersionsResult/Version/VersionId"),
            Some("v2")
        );
        assert!(xml_items(b"<a><b></a>").is_err());
    }

    #[test]
    fn dates_and_digests_have_s3s_forms() {
        assert_eq!(format_date(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(parse_date("2027-01-15T08:00:00Z"), Some(1_800_000_000));
        assert_eq!(parse_date("2027-01-15T08:00:00.000Z"), Some(1_800_000_000));
        assert_eq!(parse_date("tomorrow"), None);
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(encode("packs/a b"), "packs%2Fa%20b");
        assert_eq!(
            answer(b"<Error><Code>AccessDenied</Code><Message>retained</Message></Error>"),
            "AccessDenied: retained"
        );
    }
}
