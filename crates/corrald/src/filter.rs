//! LXD's `?filter=` language for collections: `field op value` clauses joined by `and` and
//! `or` (left to right, as LXD evaluates them), each optionally preceded by `not`; `op` is
//! `eq` or `ne`; values with spaces are quoted. Fields are the JSON names of the object,
//! nested with dots: `status`, `config.image.os` (config keys themselves contain dots),
//! `devices.eth0.nictype`, `properties.os`. Names and values compare without regard to case.

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    first: Clause,
    rest: Vec<(Join, Clause)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Join {
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
struct Clause {
    negated: bool,
    field: String,
    equal: bool,
    value: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid filter {filter:?}: {why}; write clauses as `field eq value` joined by `and`/`or`")]
pub struct FilterError {
    filter: String,
    why: String,
}

fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == c => break,
                    Some(ch) => s.push(ch),
                    None => return Err("a quote is not closed".into()),
                }
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            out.push(s);
        }
    }
    Ok(out)
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let err = |why: String| FilterError {
            filter: text.to_string(),
            why,
        };
        let toks = tokens(text).map_err(err)?;
        let mut it = toks.into_iter().peekable();
        let clause = |it: &mut std::iter::Peekable<std::vec::IntoIter<String>>| -> Result<Clause, FilterError> {
            let mut negated = false;
            while it.peek().is_some_and(|t| t.eq_ignore_ascii_case("not")) {
                it.next();
                negated = !negated;
            }
            let field = it.next().ok_or_else(|| err("a clause is missing".into()))?;
            let op = it.next().ok_or_else(|| err(format!("{field:?} has no operator")))?;
            let equal = match op.to_ascii_lowercase().as_str() {
                "eq" => true,
                "ne" => false,
                other => return Err(err(format!("unknown operator {other:?} (use eq or ne)"))),
            };
            let value = it.next().ok_or_else(|| err(format!("{field:?} {op} has no value")))?;
            Ok(Clause {
                negated,
                field,
                equal,
                value,
            })
        };
        let first = clause(&mut it)?;
        let mut rest = Vec::new();
        while let Some(join) = it.next() {
            let join = match join.to_ascii_lowercase().as_str() {
                "and" => Join::And,
                "or" => Join::Or,
                other => return Err(err(format!("expected `and` or `or`, found {other:?}"))),
            };
            rest.push((join, clause(&mut it)?));
        }
        Ok(Filter { first, rest })
    }

    /// Whether `object` (the API's JSON of one item) passes.
    pub fn matches(&self, object: &serde_json::Value) -> bool {
        self.rest
            .iter()
            .fold(self.first.matches(object), |acc, (join, c)| match join {
                Join::And => acc && c.matches(object),
                Join::Or => acc || c.matches(object),
            })
    }
}

impl Clause {
    fn matches(&self, object: &serde_json::Value) -> bool {
        let found = lookup(object, &self.field).is_some_and(|v| v.eq_ignore_ascii_case(&self.value));
        (found == self.equal) != self.negated
    }
}

/// The value at `path` as text. Map keys may hold dots (`config.image.os` is `config` then
/// `image.os`), so at each level the longest key that matches is taken.
fn lookup(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => {
            let parts: Vec<&str> = path.split('.').collect();
            (1..=parts.len()).rev().find_map(|n| {
                let key = parts[..n].join(".");
                let (_, child) = map.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key))?;
                if n == parts.len() {
                    scalar(child)
                } else {
                    lookup(child, &parts[n..].join("."))
                }
            })
        }
        _ => None,
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Null => Some(String::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pass(filter: &str, v: &serde_json::Value) -> bool {
        Filter::parse(filter).unwrap().matches(v)
    }

    #[test]
    fn lxd_filters_match_what_lxd_matches() {
        let c1 = json!({"name":"my container","status":"Running","config":{"image.os":"Debian","user.x":"1"},
            "devices":{"eth0":{"nictype":"bridged"}},"ephemeral":false});
        assert!(pass("name eq \"my container\" and status eq Running", &c1));
        assert!(pass("status eq running", &c1), "values compare without case");
        assert!(pass(
            "config.image.os eq debian or devices.eth0.nictype eq macvlan",
            &c1
        ));
        assert!(pass("devices.eth0.nictype eq bridged", &c1));
        assert!(pass("not status eq Stopped", &c1));
        assert!(pass("status ne Stopped and ephemeral eq false", &c1));
        assert!(!pass("config.user.x eq 2", &c1));
        assert!(!pass("config.missing eq x", &c1));
        assert!(pass("config.missing ne x", &c1));
        // Left to right: (false and true) or true.
        assert!(pass("status eq Stopped and name eq x or name eq 'my container'", &c1));
        assert!(!pass("status eq Running or name eq x and name eq y", &c1));
        assert!(pass("Properties.os eq Centos", &json!({"properties":{"os":"CentOS"}})));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let e = |f: &str| Filter::parse(f).unwrap_err().to_string();
        assert!(e("status").contains("has no operator"));
        assert!(e("status gt 1").contains("unknown operator \"gt\""));
        assert!(e("status eq").contains("has no value"));
        assert!(e("status eq x nand y eq z").contains("expected `and` or `or`"));
        assert!(e("name eq \"open").contains("quote is not closed"));
        assert!(e("").contains("a clause is missing"));
    }
}
