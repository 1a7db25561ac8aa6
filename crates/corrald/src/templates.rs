//! Image templates: files an image asks to have written into the instance, such as
//! /etc/hostname, at create, copy or start.
//!
//! Images from LXD's image servers use pongo2 templates; the forms they use for these files are
//! `{{ container.name }}` / `{{ instance.name }}` and `{{ container.hostname }}`, which is what
//! is rendered here. Unknown expressions are left as they are rather than guessed.

use std::io;
use std::path::{Component, Path};

use crate::instances::{InstanceRecord, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("invalid metadata.yaml: {0}")]
    Metadata(String),
    #[error("template target {0} is not an absolute path inside the instance")]
    BadTarget(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Renders `text` for `instance`.
pub fn render(text: &str, instance: &InstanceRecord) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + len].trim();
        match expr {
            "container.name" | "instance.name" | "container.hostname" | "instance.hostname" => {
                out.push_str(&instance.name)
            }
            _ => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Applies the templates of the volume's metadata.yaml whose `when` includes `trigger`
/// (`create`, `copy`, `start` or `rename`), writing into `<volume>/rootfs`; a `create_only`
/// template leaves a file that exists alone.
pub fn apply(volume: &Path, instance: &InstanceRecord, trigger: &str) -> Result<usize, TemplateError> {
    let meta_path = volume.join("metadata.yaml");
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(TemplateError::Read {
                path: meta_path.display().to_string(),
                source,
            })
        }
    };
    let meta = corral_image::ImageMetadata::from_yaml(&text).map_err(TemplateError::Metadata)?;
    let mut written = 0;
    for (target, tpl) in &meta.templates {
        if !tpl.when.iter().any(|w| w == trigger) {
            continue;
        }
        let rel = Path::new(target)
            .strip_prefix("/")
            .ok()
            .filter(|p| p.components().all(|c| matches!(c, Component::Normal(_))))
            .ok_or_else(|| TemplateError::BadTarget(target.clone()))?;
        let src = volume.join("templates").join(&tpl.template);
        let body = std::fs::read_to_string(&src).map_err(|source| TemplateError::Read {
            path: src.display().to_string(),
            source,
        })?;
        let dest = volume.join("rootfs").join(rel);
        if tpl.create_only && dest.symlink_metadata().is_ok() {
            continue;
        }
        // Never follow a symlink the image (or the container) put in place of the target.
        if dest
            .symlink_metadata()
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            std::fs::remove_file(&dest).map_err(|source| TemplateError::Write {
                path: target.clone(),
                source,
            })?;
        }
        if let Some(parent) = dest.parent() {
            if parent.symlink_metadata().map(|m| !m.is_dir()).unwrap_or(true) {
                return Err(TemplateError::BadTarget(target.clone()));
            }
        }
        std::fs::write(&dest, render(&body, instance)).map_err(|source| TemplateError::Write {
            path: target.clone(),
            source,
        })?;
        written += 1;
    }
    Ok(written)
}

/// The triggers a template may name.
const TRIGGERS: [&str; 4] = ["create", "copy", "start", "rename"];

/// A template's file name: one plain path component inside `templates/`.
fn template_file(volume: &Path, name: &str) -> Result<std::path::PathBuf, ServiceError> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(volume.join("templates").join(name)),
        _ => Err(ServiceError::BadRequest(format!(
            "invalid template name {name:?}: give a plain file name such as hostname.tpl"
        ))),
    }
}

fn io_error(what: &Path, e: io::Error) -> ServiceError {
    ServiceError::Internal(format!("{}: {e}", what.display()))
}

/// The instance's metadata.yaml (empty metadata if it has none) and a tag of its contents
/// for ETag and If-Match.
pub fn read_metadata(volume: &Path) -> Result<(corral_image::ImageMetadata, String), ServiceError> {
    let path = volume.join("metadata.yaml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error(&path, e)),
    };
    let meta = corral_image::ImageMetadata::from_yaml(&text)
        .map_err(|e| ServiceError::Internal(format!("the instance's metadata.yaml is invalid: {e}")))?;
    Ok((meta, crate::etag::of_bytes(text.as_bytes())))
}

/// Replaces the instance's metadata.yaml after checking it: absolute targets, known triggers,
/// templates named by plain file names. `etag`, if given, must tag the current contents.
pub fn write_metadata(
    volume: &Path,
    meta: &corral_image::ImageMetadata,
    etag: Option<&str>,
) -> Result<(), ServiceError> {
    for (target, tpl) in &meta.templates {
        let inside = Path::new(target)
            .strip_prefix("/")
            .is_ok_and(|p| p.components().all(|c| matches!(c, Component::Normal(_))));
        if !inside {
            return Err(ServiceError::BadRequest(format!(
                "template target {target:?} must be an absolute path inside the instance, without `..`"
            )));
        }
        template_file(volume, &tpl.template)?;
        if let Some(bad) = tpl.when.iter().find(|w| !TRIGGERS.contains(&w.as_str())) {
            return Err(ServiceError::BadRequest(format!(
                "template {target:?}: unknown trigger {bad:?}; use any of {}",
                TRIGGERS.join(", ")
            )));
        }
    }
    if let Some(tag) = etag {
        if read_metadata(volume)?.1 != tag {
            return Err(ServiceError::PreconditionFailed(
                "ETag doesn't match the metadata's current state".into(),
            ));
        }
    }
    let path = volume.join("metadata.yaml");
    let tmp = volume.join(".metadata.yaml.new");
    std::fs::write(&tmp, meta.to_yaml())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(&path, e)
        })
}

/// The names of the instance's template files.
pub fn list_templates(volume: &Path) -> Result<Vec<String>, ServiceError> {
    let dir = volume.join("templates");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Opens a template file for reading, refusing symlinks.
fn open_template(volume: &Path, name: &str) -> Result<std::fs::File, ServiceError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = template_file(volume, name)?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ServiceError::NotFound(format!("Template not found: {name}")),
            _ => io_error(&path, e),
        })
}

/// The contents of a template file.
pub fn read_template(volume: &Path, name: &str) -> Result<Vec<u8>, ServiceError> {
    let mut body = Vec::new();
    io::Read::read_to_end(&mut open_template(volume, name)?, &mut body)
        .map_err(|e| io_error(&volume.join("templates").join(name), e))?;
    Ok(body)
}

/// Creates or replaces a template file.
pub fn write_template(volume: &Path, name: &str, body: &[u8]) -> Result<(), ServiceError> {
    let path = template_file(volume, name)?;
    let dir = volume.join("templates");
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(&path, e)
        })
}

/// Deletes a template file.
pub fn delete_template(volume: &Path, name: &str) -> Result<(), ServiceError> {
    drop(open_template(volume, name)?);
    let path = template_file(volume, name)?;
    std::fs::remove_file(&path).map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_names_lxd_images_use() {
        let rec = InstanceRecord {
            name: "c1".into(),
            ..Default::default()
        };
        assert_eq!(render("{{ container.name }}\n", &rec), "c1\n");
        assert_eq!(render("127.0.1.1\t{{instance.name}}\n", &rec), "127.0.1.1\tc1\n");
        assert_eq!(render("{{ config_get(\"x\") }} {{", &rec), "{{ config_get(\"x\") }} {{");
    }

    #[test]
    fn metadata_and_templates_round_trip_and_refuse_escapes() {
        let dir = std::env::temp_dir().join(format!("corral-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (empty, tag0) = read_metadata(&dir).unwrap();
        assert_eq!(empty, corral_image::ImageMetadata::default());
        let mut meta = corral_image::ImageMetadata {
            architecture: "x86_64".into(),
            ..Default::default()
        };
        meta.templates.insert(
            "/etc/hostname".into(),
            corral_image::ImageTemplate {
                when: vec!["start".into()],
                template: "hostname.tpl".into(),
                ..Default::default()
            },
        );
        write_metadata(&dir, &meta, Some(&tag0)).unwrap();
        let (back, tag1) = read_metadata(&dir).unwrap();
        assert_eq!(back, meta);
        assert_ne!(tag0, tag1);
        assert!(matches!(
            write_metadata(&dir, &meta, Some(&tag0)),
            Err(ServiceError::PreconditionFailed(_))
        ));
        let mut bad = meta.clone();
        bad.templates.get_mut("/etc/hostname").unwrap().template = "../../etc/shadow".into();
        assert!(matches!(
            write_metadata(&dir, &bad, None),
            Err(ServiceError::BadRequest(_))
        ));
        let mut bad = meta.clone();
        bad.templates.get_mut("/etc/hostname").unwrap().when = vec!["boot".into()];
        assert!(matches!(
            write_metadata(&dir, &bad, None),
            Err(ServiceError::BadRequest(_))
        ));

        write_template(&dir, "hostname.tpl", b"{{ container.name }}\n").unwrap();
        assert_eq!(list_templates(&dir).unwrap(), vec!["hostname.tpl"]);
        assert_eq!(read_template(&dir, "hostname.tpl").unwrap(), b"{{ container.name }}\n");
        assert!(matches!(
            read_template(&dir, "../metadata.yaml"),
            Err(ServiceError::BadRequest(_))
        ));
        std::os::unix::fs::symlink("/etc/shadow", dir.join("templates/evil")).unwrap();
        assert!(read_template(&dir, "evil").is_err());
        delete_template(&dir, "hostname.tpl").unwrap();
        assert!(matches!(
            delete_template(&dir, "hostname.tpl"),
            Err(ServiceError::NotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
