//! Image templates: files an image asks to have written into the instance, such as
//! /etc/hostname, at create, copy or start.
//!
//! Images from LXD's image servers use pongo2 templates; the forms they use for these files are
//! `{{ container.name }}` / `{{ instance.name }}` and `{{ container.hostname }}`, which is what
//! is rendered here. Unknown expressions are left as they are rather than guessed.

use std::io;
use std::path::{Component, Path};

use crate::instances::InstanceRecord;

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
/// (`create`, `copy` or `start`), writing into `<volume>/rootfs`.
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
}
