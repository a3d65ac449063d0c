//! Container URLs: `s3://bucket/prefix`, `file:///abs/dir` or a plain path.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a container lives, parsed from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerUrl {
    /// A directory: `file:///abs/dir` or a plain path.
    File(PathBuf),
    /// An S3 bucket and key prefix: `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl ContainerUrl {
    /// Parses `file:///abs/dir` or a plain (absolute or relative) path.
    pub fn parse(url: &str) -> Result<Self> {
        if url.is_empty() || url.chars().any(|c| c.is_control()) {
            return Err(Error::Config(format!(
                "invalid container URL '{}'",
                url.escape_debug()
            )));
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(Error::Config(format!(
                    "container URL '{url}' must be file:///absolute/path"
                )));
            }
            return Ok(ContainerUrl::File(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err(Error::Config(format!(
                    "container URL '{url}': '{bucket}' is not a valid S3 bucket name"
                )));
            }
            if !prefix.is_empty() {
                crate::store::validate_key(prefix).map_err(|_| {
                    Error::Config(format!("container URL '{url}': invalid key prefix"))
                })?;
            }
            return Ok(ContainerUrl::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::Config(format!(
                "container URL scheme '{scheme}://' is not supported (use s3://bucket/prefix, file:///path or a plain path)"
            )));
        }
        let p = Path::new(url);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("resolve current directory", ".", e))?
                .join(p)
        };
        Ok(ContainerUrl::File(abs))
    }

    /// The canonical URL string (what records and `--json` show).
    pub fn to_url(&self) -> String {
        match self {
            ContainerUrl::File(p) => format!("file://{}", p.display()),
            ContainerUrl::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            ContainerUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ContainerUrl::parse("file:///a/b").unwrap(),
            ContainerUrl::File("/a/b".into())
        );
        assert_eq!(ContainerUrl::parse("/x").unwrap().to_url(), "file:///x");
        assert!(ContainerUrl::parse("file://rel").is_err());
        assert!(ContainerUrl::parse("gopher://x").is_err());
        assert_eq!(
            ContainerUrl::parse("s3://my-bucket/a/b/").unwrap(),
            ContainerUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            ContainerUrl::parse("s3://bkt").unwrap().to_url(),
            "s3://bkt"
        );
        assert!(ContainerUrl::parse("s3://B_ad").is_err());
        assert!(ContainerUrl::parse("s3://bucket/../x").is_err());
        assert!(ContainerUrl::parse("").is_err());
        assert!(ContainerUrl::parse("a\nb").is_err());
    }
}
