//! An image named by a URL, as `lxc image import URL` has LXD fetch it: the URL's answer names
//! the image file in an `LXD-Image-URL` header (`Incus-Image-URL`) and its sha256 in
//! `LXD-Image-Hash` (`Incus-Image-Hash`); an answer without them is taken as the image file
//! itself (then only the image's own checks apply). The image file must be on the server the
//! URL names: nothing else is contacted.

use crate::fetch::{Client, ClientOptions};
use crate::resolve::RemoteFile;
use crate::{safe_relative, Error};

/// The file to download for an image URL, and the client of its server.
#[derive(Debug, Clone)]
pub struct UrlImage {
    pub client: Client,
    pub file: RemoteFile,
}

/// `scheme://authority` and the rest of `url` (its path and query, without the leading `/`).
fn split_url(url: &str) -> Result<(String, String), Error> {
    let url = url.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "invalid image URL {url:?}: it must start with https:// or http://"
            ))
        })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::Unsupported(format!(
            "invalid image URL {url:?}: it needs a host (and no user name)"
        )));
    }
    let scheme_len = url.len() - rest.len();
    Ok((format!("{}{authority}", &url[..scheme_len]), path.to_string()))
}

/// Reads the answer of `url` and says which file holds the image.
pub fn resolve_url(url: &str, options: ClientOptions) -> Result<UrlImage, Error> {
    let (base, path) = split_url(url)?;
    if !safe_relative(path.split(['?', '#']).next().unwrap_or_default()) {
        return Err(Error::Unsupported(format!(
            "invalid image URL {url:?}: it names no file (or has `.`, `..` or empty path components)"
        )));
    }
    let client = Client::new(&base, options)?;
    let answer = client.image_url_headers(&path)?;
    let Some(image_url) = answer.image_url else {
        if let Some(hash) = answer.image_hash {
            return Err(Error::Unsupported(format!(
                "{url} answered an LXD-Image-Hash ({hash}) but no LXD-Image-URL saying where the image is"
            )));
        }
        // The URL is the image file.
        return Ok(UrlImage {
            client,
            file: RemoteFile {
                ftype: "lxd.tar.xz".into(),
                path,
                sha256: String::new(),
                size: answer.content_length.unwrap_or(0),
            },
        });
    };
    let hash = answer.image_hash.unwrap_or_default().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Unsupported(format!(
            "{url} names the image {image_url} without its sha256 (an LXD-Image-Hash header of 64 hex digits): \
             it cannot be checked"
        )));
    }
    let file_path = if image_url.starts_with("https://") || image_url.starts_with("http://") {
        let (other_base, other_path) = split_url(&image_url)?;
        if other_base != base {
            return Err(Error::Unsupported(format!(
                "{url} names the image at {image_url}, on another server: Corral downloads only from the address \
                 it was given ({base})"
            )));
        }
        other_path
    } else if let Some(abs) = image_url.strip_prefix('/') {
        abs.to_string()
    } else {
        // Relative to the URL's directory.
        match path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{image_url}"),
            None => image_url.clone(),
        }
    };
    if !safe_relative(file_path.split(['?', '#']).next().unwrap_or_default()) {
        return Err(Error::Unsupported(format!(
            "{url} names an invalid image file path {image_url:?}"
        )));
    }
    Ok(UrlImage {
        client,
        file: RemoteFile {
            ftype: "lxd.tar.xz".into(),
            path: file_path,
            sha256: hash,
            size: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_server_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/a/b.tar.xz").unwrap(),
            ("http://127.0.0.1:8080".to_string(), "a/b.tar.xz".to_string())
        );
        assert_eq!(
            split_url("https://h/x?y=1").unwrap(),
            ("https://h".to_string(), "x?y=1".to_string())
        );
        assert!(split_url("ftp://h/x").is_err());
        assert!(split_url("http:///x").is_err());
        assert!(split_url("http://u@h/x").is_err());
    }
}
