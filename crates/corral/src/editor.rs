//! The `edit` verbs' YAML round trip, as lxc does it: the object in $VISUAL or $EDITOR (else
//! vi), reopened on what the user wrote, with the error at its top, until the server accepts it
//! or the user gives up; or, when stdin is not a terminal, the YAML read from stdin.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

/// The first line of the error put at the top of the text when the editor is reopened.
const ERROR_FIRST: &str = "# Error: ";
/// Its other lines.
const ERROR_MORE: &str = "#        ";
const ERROR_HINT: &str = "# Fix the YAML below and save it; save it unchanged to give up.";

/// The text on stdin, when stdin is not a terminal and the text is not blank.
pub fn stdin_text() -> Result<Option<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text).context("cannot read stdin")?;
    Ok((!text.trim().is_empty()).then_some(text))
}

/// YAML on stdin (when it is not a terminal) read as `T`, a `what`; None if there is none.
pub fn stdin_yaml<T: DeserializeOwned>(what: &str) -> Result<Option<T>> {
    match stdin_text()? {
        None => Ok(None),
        Some(text) => Ok(Some(
            serde_saphyr::from_str(&text).with_context(|| format!("the YAML on stdin is not {what}"))?,
        )),
    }
}

/// Opens `text` in the editor, then gives what was saved, read as `T`, to `apply`; on an error
/// (bad YAML, or `apply`'s, the server's refusal), shows it, waits for enter, and reopens the
/// editor on the user's text with the error at its top. Saving the text unchanged ends it:
/// nothing to do the first time, the last error after one.
pub fn edit_yaml<T: DeserializeOwned>(text: &str, mut apply: impl FnMut(T) -> Result<()>) -> Result<()> {
    let file = std::env::temp_dir().join(format!("corral-edit-{}.yaml", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut shown = text.to_string();
        let mut last_error: Option<anyhow::Error> = None;
        loop {
            std::fs::write(&file, &shown).with_context(|| format!("cannot write {}", file.display()))?;
            run_editor(&file)?;
            let saved = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            if saved == shown {
                return match last_error {
                    None => Ok(()),
                    Some(e) => Err(e),
                };
            }
            let attempt = serde_saphyr::from_str::<T>(&saved)
                .context("the YAML cannot be read")
                .and_then(&mut apply);
            let Err(e) = attempt else { return Ok(()) };
            eprintln!("Config parsing error: {e:#}");
            eprintln!("Press enter to open the editor again or ctrl+c to abort change");
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line)? == 0 {
                return Err(e);
            }
            shown = with_error(&saved, &format!("{e:#}"));
            last_error = Some(e);
        }
    })();
    let _ = std::fs::remove_file(&file);
    result
}

/// `text` with `error` in comments at its top, in place of the one an earlier attempt put there.
fn with_error(text: &str, error: &str) -> String {
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| l.starts_with(ERROR_FIRST) || l.starts_with(ERROR_MORE) || *l == ERROR_HINT)
        .collect();
    let mut out = String::new();
    for (i, line) in error.lines().enumerate() {
        out.push_str(if i == 0 { ERROR_FIRST } else { ERROR_MORE });
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(ERROR_HINT);
    out.push('\n');
    for line in body {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn run_editor(file: &Path) -> Result<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".into());
    // The editor may carry arguments ("code --wait"): let the shell split them.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .with_context(|| format!("cannot run the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_replace_the_last_one() {
        let once = with_error("### header\nconfig: {}\n", "Invalid config:\nbad key");
        assert_eq!(
            once,
            format!("{ERROR_FIRST}Invalid config:\n{ERROR_MORE}bad key\n{ERROR_HINT}\n### header\nconfig: {{}}\n")
        );
        let twice = with_error(&once, "other");
        assert_eq!(
            twice,
            format!("{ERROR_FIRST}other\n{ERROR_HINT}\n### header\nconfig: {{}}\n")
        );
        let v: serde_json::Value = serde_saphyr::from_str(&twice).unwrap();
        assert_eq!(v, serde_json::json!({"config": {}}));
    }
}
