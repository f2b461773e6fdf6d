//! How an answer is judged: status, errorCode, CorrelationID echo, whether our org.nr shows in
//! `banks`, and field values at dotted paths. Every mismatch is one problem in words; a step
//! passes when there is none.

use super::Runner;
use crate::checklist::cases::Expect;
use crate::checklist::wire::Exchange;

impl Runner {
    /// Judges one KFR answer: every way it differs from `expect`, in words (none: the step
    /// passed).
    pub(super) fn check(&self, expect: &Expect, ex: &Exchange) -> Vec<String> {
        let mut problems = Vec::new();
        if !expect.status.is_empty() && !expect.status.contains(&ex.status) {
            problems.push(format!("expected status {}", or_list(&expect.status)));
        }
        if !expect.error_code.is_empty() && !ex.error_code.as_ref().is_some_and(|c| expect.error_code.contains(c)) {
            problems.push(format!("expected errorCode {}", or_list(&expect.error_code)));
        }
        if let Some(want) = expect.correlation_id_echoed
            && want != ex.echoed
        {
            problems.push(if want {
                "CorrelationID not echoed".to_string()
            } else {
                "CorrelationID echoed".to_string()
            });
        }
        if let Some(want) = expect.found
            && want != self.shows_us(&ex.json)
        {
            problems.push(if want {
                "our org.nr is not in banks".to_string()
            } else {
                "our org.nr is in banks".to_string()
            });
        }
        problems.extend(self.check_fields(expect, &ex.json));
        problems
    }

    /// Judges the `fields` expectations alone (a token step has no status to check).
    pub(super) fn check_fields(&self, expect: &Expect, json: &serde_json::Value) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, want) in &expect.fields {
            let want = self.expected_json(want);
            let got = field(json, path);
            if got.as_ref() != Some(&want) {
                problems.push(format!(
                    "{path} is {}, expected {want}",
                    got.map(|g| g.to_string()).unwrap_or_else(|| "absent".into())
                ));
            }
        }
        problems
    }

    /// The expected value as JSON, `{org}` / `{other_fid}` replaced.
    pub(super) fn expected_json(&self, v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(
                s.replace("{org}", &self.cfg.org_number)
                    .replace("{other_fid}", &self.other_fid),
            ),
            other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// `json` at a dotted path; a numeric segment indexes an array, `#` is an array's length.
pub(super) fn field(json: &serde_json::Value, path: &str) -> Option<serde_json::Value> {
    let mut cur = json;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        if *seg == "#" && i + 1 == segments.len() {
            return cur.as_array().map(|a| serde_json::json!(a.len()));
        }
        cur = match seg.parse::<usize>() {
            Ok(n) => cur.get(n)?,
            Err(_) => cur.get(*seg)?,
        };
    }
    Some(cur.clone())
}

/// `a or b or c`: how the report lists acceptable values.
pub(super) fn or_list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_dotted_paths_and_lengths() {
        let j = serde_json::json!({"banks": [{"organizationID": "916960190", "activeAccount": false}]});
        assert_eq!(field(&j, "banks.#"), Some(serde_json::json!(1)));
        assert_eq!(field(&j, "banks.0.activeAccount"), Some(serde_json::json!(false)));
        assert_eq!(field(&j, "banks.1.organizationID"), None);
        assert_eq!(
            field(&serde_json::json!({"banks": []}), "banks.#"),
            Some(serde_json::json!(0))
        );
    }
}
