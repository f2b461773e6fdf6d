//! The agent's event model at the door: one JSON event (or one spool CSV line, or one `kfr
//! enqueue`) → a validated [`NewEvent`], or a typed [`Refusal`] naming where, which field and
//! which rule (docs/sync.md, "Events").
//!
//! Rules, checked per event; the first broken one is the event's verdict:
//! - each key at most once (`event.duplicate_key`): JSON leaves the meaning of a repeated key
//!   open, and serde_json would silently keep the last one ([`decode`]);
//! - only the fields `op`, `customer_id`, `start_date`, `event_id`, `occurred_at` (an unknown field
//!   is a mistake in the sender, not something to ignore silently);
//! - `op` is `add` or `remove`;
//! - `customer_id` is a string (a JSON number would lose a fødselsnummer's leading zero) and passes
//!   the identifier rules under the environment's [`IdPolicy`] — the same check as `kfr add`;
//! - `start_date` only on `add`: `YYYY-MM-DD`, not after today in Oslo, not before 1900 (the
//!   load's rules, since KFR refuses such dates with KFR-010);
//! - `event_id` 1..=128 visible ASCII characters (no spaces or controls); generated (UUID v4) when
//!   absent — a source that can be re-read gives its own deterministic id instead;
//! - `occurred_at` RFC 3339; when absent, the time the event was received.
//!
//! Personal data: a refusal never carries the identifier in full — only [`ids::mask`]ed — and an
//! event id is [`ids::scrub`]bed in refusals, since a sender may build ids from customer numbers.

use crate::ids::{self, CustomerId, IdError, IdPolicy};
use crate::store::NewEvent;
use crate::store::Operation;
use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use serde_json::{Map, Value};
use std::fmt;

/// The fields an event may carry.
pub const FIELDS: [&str; 5] = ["op", "customer_id", "start_date", "event_id", "occurred_at"];

/// Longest event id accepted, in characters (ASCII, so bytes).
pub const MAX_EVENT_ID: usize = 128;

/// What the rules compare against, and what fills what the event leaves out.
#[derive(Debug, Clone)]
pub struct Context {
    /// Which identifiers this environment accepts (the CLI's `id_policy`).
    pub policy: IdPolicy,
    /// "Today" in Oslo, for the start date rule.
    pub today: NaiveDate,
    /// When the event reached the agent: the default `occurred_at`.
    pub received_at: DateTime<Utc>,
    /// The source's name, stored with the event.
    pub source: String,
}

impl Context {
    /// A context for events received now.
    pub fn now(policy: IdPolicy, source: impl Into<String>) -> Self {
        let received_at = Utc::now();
        Context {
            policy,
            today: crate::clock::oslo_date(received_at),
            received_at,
            source: source.into(),
        }
    }
}

/// Where a refused event was: its position in a request, or a file's line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Location {
    /// 0-based position among the request's events; `line` for NDJSON (1-based).
    Index {
        index: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
    },
    /// A spool file or stdin line (1-based).
    Line { file: String, line: u64 },
    /// A row of the core system's outbox table, by its id.
    Row { table: Box<str>, id: i64 },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Index { index, line: None } => write!(f, "event {index}"),
            Location::Index { index, line: Some(l) } => write!(f, "event {index} (line {l})"),
            Location::Line { file, line } => write!(f, "{file}:{line}"),
            Location::Row { table, id } => write!(f, "{table} row id {id}"),
        }
    }
}

/// Why one event was refused. Safe to log and to send back: the identifier only masked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{at}: {field}: {message} (rule {rule})")]
pub struct Refusal {
    #[serde(flatten)]
    pub at: Location,
    /// The event's id as sent (scrubbed), when it had a readable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The field at fault (`event` for the event as a whole).
    pub field: &'static str,
    /// Stable rule name `field.rule` (also the `reason` label of `kfr_sync_events_refused_total`).
    pub rule: String,
    /// For people; masked.
    pub message: String,
}

/// A rule broken by one field, before it is placed ([`Broken::at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub field: &'static str,
    pub rule: String,
    pub message: String,
}

impl Broken {
    pub fn new(field: &'static str, rule: &str, message: impl Into<String>) -> Self {
        Broken {
            field,
            rule: format!("{field}.{rule}"),
            message: message.into(),
        }
    }

    /// Places the broken rule at `at`, with the event's id if it was readable.
    pub fn at(self, at: Location, event_id: Option<&str>) -> Refusal {
        Refusal {
            at,
            event_id: event_id.map(ids::scrub),
            field: self.field,
            rule: self.rule,
            message: self.message,
        }
    }

    fn id(e: IdError, raw: &str) -> Self {
        Broken::new(
            "customer_id",
            e.code(),
            format!("customer identifier {}: {e}", ids::mask(raw)),
        )
    }
}

/// Parses one JSON event (already decoded to a value) at `at`.
pub fn from_json(value: &Value, at: Location, cx: &Context) -> Result<NewEvent, Refusal> {
    let Value::Object(map) = value else {
        return Err(Broken::new("event", "not_object", "an event is a JSON object").at(at, None));
    };
    // Read the id first (if it is readable) so every other refusal can name it.
    let sent_id = map.get("event_id").and_then(Value::as_str);
    fields(map, cx).map_err(|b| b.at(at, sent_id))
}

/// Parses one line of JSON text (NDJSON, JSONL): a syntax error, or an object naming a key
/// twice, is a refusal of that line.
pub fn from_json_text(text: &str, at: Location, cx: &Context) -> Result<NewEvent, Refusal> {
    match decode(text) {
        Ok(d) => match d.duplicates.first() {
            Some((_, key)) => {
                let sent_id = d.value.get("event_id").and_then(Value::as_str);
                Err(duplicate_key(key).at(at, sent_id))
            }
            None => from_json(&d.value, at, cx),
        },
        Err(e) => Err(json_syntax(&e).at(at, None)),
    }
}

/// JSON text decoded as [`serde_json`] decodes it, plus the keys that some object in it names
/// more than once.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value; a repeated key holds its last value (serde_json's own choice).
    pub value: Value,
    /// The first repeated key of each object that has one, in text order, with the position of
    /// the top-level array item it is in (`None` when the text is not an array).
    pub duplicates: Vec<(Option<usize>, String)>,
}

/// Decodes JSON text, noting repeated keys instead of silently keeping the last value: RFC 8259
/// leaves the meaning of `{"op":"add","op":"remove"}` open, and a sender who wrote it meant one
/// of the two; guessing could register the opposite of the bank's word (issue 19). The caller
/// refuses such an event with [`duplicate_key`]. Nesting is bounded by serde_json's recursion
/// limit, as for a plain decode.
pub fn decode(text: &str) -> Result<Decoded, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut duplicates = vec![];
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict {
        duplicates: &mut duplicates,
        item: None,
        top: true,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Decoded { value, duplicates })
}

/// The refusal of an event object that names `key` twice.
pub fn duplicate_key(key: &str) -> Broken {
    Broken::new(
        "event",
        "duplicate_key",
        format!(
            "key \"{}\" appears more than once in the event; JSON does not say which value counts, so the event is refused rather than guessed",
            ids::mask(key)
        ),
    )
}

/// [`decode`]'s visitor: builds a [`Value`] and records repeated keys.
struct Strict<'a> {
    duplicates: &'a mut Vec<(Option<usize>, String)>,
    /// The top-level array item being decoded.
    item: Option<usize>,
    /// Whether this is the text's outermost value (its array items are the events).
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = vec![];
        while let Some(v) = seq.next_element_seed(Strict {
            duplicates: &mut *self.duplicates,
            item: if self.top { Some(out.len()) } else { self.item },
            top: false,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        let mut repeated = false;
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(Strict {
                duplicates: &mut *self.duplicates,
                item: self.item,
                top: false,
            })?;
            if map.contains_key(&key) && !repeated {
                repeated = true;
                self.duplicates.push((self.item, key.clone()));
            }
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// A JSON syntax error, with its position but without the text (it may hold an identifier).
pub fn json_syntax(e: &serde_json::Error) -> Broken {
    Broken::new(
        "event",
        "json",
        format!(
            "not valid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

fn fields(map: &Map<String, Value>, cx: &Context) -> Result<NewEvent, Broken> {
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        // The key is the sender's text: it is shown masked like anything else unvalidated.
        return Err(Broken::new(
            "event",
            "unknown_field",
            format!(
                "unknown field \"{}\" (fields: {})",
                ids::mask(unknown),
                FIELDS.join(", ")
            ),
        ));
    }
    let text = |field: &'static str| -> Result<Option<&str>, Broken> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Broken::new(field, "type", format!("{field} must be a JSON string"))),
        }
    };
    let op = match text("op")? {
        None => return Err(Broken::new("op", "missing", "op is required: \"add\" or \"remove\"")),
        Some(op) => parse_op(op)?,
    };
    let customer =
        text("customer_id")?.ok_or_else(|| Broken::new("customer_id", "missing", "customer_id is required"))?;
    let customer = check_customer(customer, &cx.policy)?;
    let start_date = match text("start_date")? {
        None => None,
        Some(s) => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .filter(|_| s.len() == 10)
                .ok_or_else(|| Broken::new("start_date", "format", "start_date must be a date YYYY-MM-DD"))?;
            Some(d)
        }
    };
    let start_date = check_start(op, start_date, cx.today)?;
    let event_id = match text("event_id")? {
        None => generated_id(),
        Some(id) => check_event_id(id)?,
    };
    let occurred_at = match text("occurred_at")? {
        None => cx.received_at,
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|_| {
                Broken::new(
                    "occurred_at",
                    "format",
                    "occurred_at must be an RFC 3339 time with offset (2024-05-01T12:00:00Z)",
                )
            })?
            .with_timezone(&Utc),
    };
    Ok(NewEvent {
        event_id,
        op,
        customer_id: customer.as_str().to_string(),
        start_date,
        occurred_at,
        source: cx.source.clone(),
    })
}

/// `add` or `remove`, exactly.
pub fn parse_op(op: &str) -> Result<Operation, Broken> {
    match op {
        "add" => Ok(Operation::Add),
        "remove" => Ok(Operation::Remove),
        other => Err(Broken::new(
            "op",
            "unknown",
            format!("op \"{}\" is neither \"add\" nor \"remove\"", ids::mask(other)),
        )),
    }
}

/// The identifier rules under `policy`, as `kfr add` applies them.
pub fn check_customer(raw: &str, policy: &IdPolicy) -> Result<CustomerId, Broken> {
    if raw.trim().is_empty() {
        return Err(Broken::new("customer_id", "missing", "customer_id is empty"));
    }
    // Surrounding whitespace is not an identifier character: the stored text must be exact.
    if raw.trim() != raw {
        return Err(Broken::id(
            IdError::NotDigit {
                position: if raw.starts_with(char::is_whitespace) {
                    1
                } else {
                    raw.chars().count()
                },
            },
            raw,
        ));
    }
    CustomerId::parse(raw, policy).map_err(|e| Broken::id(e, raw))
}

/// A start date only on an add, not in the future (Oslo), not before 1900.
pub fn check_start(op: Operation, start: Option<NaiveDate>, today: NaiveDate) -> Result<Option<NaiveDate>, Broken> {
    match start {
        None => Ok(None),
        Some(_) if op == Operation::Remove => Err(Broken::new(
            "start_date",
            "not_on_remove",
            "start_date is only for add: a remove ends the relationship today",
        )),
        Some(d) if d > today => Err(Broken::new(
            "start_date",
            "in_future",
            format!("start date {d} is after today ({today}, Oslo)"),
        )),
        Some(d) if d.year() < 1900 => Err(Broken::new(
            "start_date",
            "before_1900",
            format!("start date {d} is before 1900"),
        )),
        Some(d) => Ok(Some(d)),
    }
}

/// 1..=128 visible ASCII characters.
pub fn check_event_id(id: &str) -> Result<String, Broken> {
    if id.is_empty() || id.len() > MAX_EVENT_ID {
        return Err(Broken::new(
            "event_id",
            "length",
            format!("event_id must be 1 to {MAX_EVENT_ID} characters"),
        ));
    }
    if let Some(p) = id.chars().position(|c| !c.is_ascii_graphic()) {
        return Err(Broken::new(
            "event_id",
            "characters",
            format!(
                "event_id character {} is not visible ASCII (no spaces or controls)",
                p + 1
            ),
        ));
    }
    Ok(id.to_string())
}

/// A fresh id for an event that came without one.
pub fn generated_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Source name of events made by `kfr enqueue`.
pub const ENQUEUE_SOURCE: &str = "kfr enqueue";

/// What `kfr enqueue add|remove ID [--start-date D]` puts in the outbox: one event, validated by
/// the same rules as every source, with a new event id and `occurred_at` now.
pub fn enqueue_event(
    op: Operation,
    customer_id: &str,
    start_date: Option<&str>,
    policy: &IdPolicy,
    now: DateTime<Utc>,
) -> Result<NewEvent, Refusal> {
    let at = Location::Index { index: 0, line: None };
    let build = || -> Result<NewEvent, Broken> {
        let customer = check_customer(customer_id, policy)?;
        let start =
            match start_date {
                None => None,
                // The command line takes the load's two date forms, like the spool's CSV.
                Some(s) => Some(crate::input::grammar::parse_date(s.as_bytes()).ok_or_else(|| {
                    Broken::new("start_date", "format", "start date must be YYYY-MM-DD or DD.MM.YYYY")
                })?),
            };
        let start_date = check_start(op, start, crate::clock::oslo_date(now))?;
        Ok(NewEvent {
            event_id: generated_id(),
            op,
            customer_id: customer.as_str().to_string(),
            start_date,
            occurred_at: now,
            source: ENQUEUE_SOURCE.to_string(),
        })
    };
    build().map_err(|b| b.at(at, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::source::testkit::person;
    use serde_json::json;

    fn cx() -> Context {
        Context {
            policy: IdPolicy::test(),
            today: NaiveDate::from_ymd_opt(2024, 6, 1).unwrap(),
            received_at: DateTime::parse_from_rfc3339("2024-06-01T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            source: "http".into(),
        }
    }

    fn at0() -> Location {
        Location::Index { index: 0, line: None }
    }

    fn refuse(v: Value) -> Refusal {
        let r = from_json(&v, at0(), &cx()).unwrap_err();
        // Whatever the rule, the refusal never shows a whole identifier.
        let shown = format!("{r} {}", serde_json::to_string(&r).unwrap());
        assert!(!shown.contains(&person(0)), "{shown}");
        assert!(!shown.contains(&person(9)), "{shown}");
        r
    }

    #[test]
    fn a_complete_add_and_a_minimal_remove_are_accepted() {
        let e = from_json(
            &json!({"op":"add","customer_id":person(0),"start_date":"2020-05-01",
                    "event_id":"core-1","occurred_at":"2024-05-31T23:30:00+02:00"}),
            at0(),
            &cx(),
        )
        .unwrap();
        assert_eq!(e.op, Operation::Add);
        assert_eq!(e.customer_id, person(0));
        assert_eq!(e.start_date, NaiveDate::from_ymd_opt(2020, 5, 1));
        assert_eq!(e.event_id, "core-1");
        assert_eq!(e.occurred_at.to_rfc3339(), "2024-05-31T21:30:00+00:00");
        assert_eq!(e.source, "http");

        let r = from_json(&json!({"op":"remove","customer_id":person(1)}), at0(), &cx()).unwrap();
        assert_eq!(r.op, Operation::Remove);
        assert_eq!(r.occurred_at, cx().received_at);
        assert!(uuid::Uuid::parse_str(&r.event_id).is_ok(), "a generated id is a UUID");
        let again = from_json(&json!({"op":"remove","customer_id":person(1)}), at0(), &cx()).unwrap();
        assert_ne!(r.event_id, again.event_id);
        // Today is allowed, and null means absent.
        let today = json!({"op":"add","customer_id":person(0),"start_date":"2024-06-01","event_id":null});
        assert!(from_json(&today, at0(), &cx()).is_ok());
    }

    #[test]
    fn every_rule_refuses_with_its_field_and_name() {
        let p = person(0);
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([1]), "event", "event.not_object"),
            (
                json!({"op":"add","customer_id":p,"name":"Ola"}),
                "event",
                "event.unknown_field",
            ),
            (json!({"customer_id":p}), "op", "op.missing"),
            (json!({"op":1,"customer_id":p}), "op", "op.type"),
            (json!({"op":"delete","customer_id":p}), "op", "op.unknown"),
            (json!({"op":"add"}), "customer_id", "customer_id.missing"),
            (
                json!({"op":"add","customer_id":15108695088u64}),
                "customer_id",
                "customer_id.type",
            ),
            (
                json!({"op":"add","customer_id":"123"}),
                "customer_id",
                "customer_id.length",
            ),
            (
                json!({"op":"add","customer_id":format!(" {p}")}),
                "customer_id",
                "customer_id.not_digit",
            ),
            (
                json!({"op":"add","customer_id":format!("{}{}", &p[..10], (p.as_bytes()[10] - b'0' + 1) % 10)}),
                "customer_id",
                "customer_id.second_check_digit",
            ),
            (
                json!({"op":"add","customer_id":p,"start_date":"01.05.2020"}),
                "start_date",
                "start_date.format",
            ),
            (
                json!({"op":"add","customer_id":p,"start_date":"2020-5-1"}),
                "start_date",
                "start_date.format",
            ),
            (
                json!({"op":"add","customer_id":p,"start_date":"2024-06-02"}),
                "start_date",
                "start_date.in_future",
            ),
            (
                json!({"op":"add","customer_id":p,"start_date":"1899-12-31"}),
                "start_date",
                "start_date.before_1900",
            ),
            (
                json!({"op":"remove","customer_id":p,"start_date":"2020-01-01"}),
                "start_date",
                "start_date.not_on_remove",
            ),
            (
                json!({"op":"add","customer_id":p,"event_id":""}),
                "event_id",
                "event_id.length",
            ),
            (
                json!({"op":"add","customer_id":p,"event_id":"x".repeat(129)}),
                "event_id",
                "event_id.length",
            ),
            (
                json!({"op":"add","customer_id":p,"event_id":"a b"}),
                "event_id",
                "event_id.characters",
            ),
            (
                json!({"op":"add","customer_id":p,"event_id":"æ"}),
                "event_id",
                "event_id.characters",
            ),
            (
                json!({"op":"add","customer_id":p,"occurred_at":"2024-06-01 10:00"}),
                "occurred_at",
                "occurred_at.format",
            ),
        ];
        for (v, field, rule) in cases {
            let r = refuse(v.clone());
            assert_eq!((r.field, r.rule.as_str()), (field, rule), "{v}");
        }
        // 128 characters is still fine.
        assert!(
            from_json(
                &json!({"op":"add","customer_id":p,"event_id":"x".repeat(128)}),
                at0(),
                &cx()
            )
            .is_ok()
        );
    }

    #[test]
    fn the_policy_decides_on_synthetic_identities() {
        let v = json!({"op":"add","customer_id":person(0)});
        let prod = Context {
            policy: IdPolicy::prod(),
            ..cx()
        };
        let r = from_json(&v, at0(), &prod).unwrap_err();
        assert_eq!(r.rule, "customer_id.synthetic_not_allowed");
        assert!(from_json(&v, at0(), &cx()).is_ok());
    }

    #[test]
    fn a_refusal_masks_the_identifier_and_scrubs_the_event_id() {
        let p = person(9);
        let bad = format!("{}{}", &p[..10], (p.as_bytes()[10] - b'0' + 1) % 10);
        let r = refuse(
            json!({"op":"add","customer_id":bad,"event_id":format!("add-{}", person(9)),
                              "start_date":"2999-01-01"}),
        );
        assert_eq!(r.rule, "customer_id.second_check_digit");
        assert!(r.message.contains("*********"), "{}", r.message);
        assert!(r.event_id.as_deref().unwrap().starts_with("add-*********"));
        let text = serde_json::to_value(&r).unwrap();
        assert_eq!(text["index"], 0);
        assert_eq!(text["field"], "customer_id");
        // An unknown key that is itself an identifier is masked too.
        let r = refuse(json!({"op":"add","customer_id":person(0), person(9): 1}));
        assert_eq!(r.rule, "event.unknown_field");
    }

    #[test]
    fn json_syntax_errors_do_not_echo_the_text() {
        let line = format!("{{\"op\":\"add\",\"customer_id\":{}", person(9));
        let r = from_json_text(
            &line,
            Location::Line {
                file: "a.jsonl".into(),
                line: 3,
            },
            &cx(),
        )
        .unwrap_err();
        assert_eq!(r.rule, "event.json");
        assert!(r.to_string().starts_with("a.jsonl:3: event: not valid JSON"), "{r}");
        assert!(!r.to_string().contains(&person(9)));
    }

    /// JSON leaves a repeated key's meaning open and serde_json keeps the last value, so
    /// `"op":"add",…,"op":"remove"` would be stored as a remove: refused instead (issue 19).
    #[test]
    fn a_repeated_key_is_refused_naming_the_key() {
        let at = Location::Line {
            file: "a.jsonl".into(),
            line: 2,
        };
        let line = format!("{{\"op\":\"add\",\"customer_id\":\"{}\",\"op\":\"remove\"}}", person(0));
        let r = from_json_text(&line, at.clone(), &cx()).unwrap_err();
        assert_eq!((r.field, r.rule.as_str()), ("event", "event.duplicate_key"), "{r}");
        assert!(r.to_string().starts_with("a.jsonl:2: event: key \"op\" "), "{r}");
        // A repeated identifier key is named masked, like any other unvalidated text.
        let line = format!(
            "{{\"op\":\"add\",\"customer_id\":\"{0}\",\"customer_id\":\"{0}\"}}",
            person(9)
        );
        let r = from_json_text(&line, at.clone(), &cx()).unwrap_err();
        assert_eq!(r.rule, "event.duplicate_key");
        assert!(!r.to_string().contains(&person(9)), "{r}");
        // Keys that differ only in case are different keys (and the unknown one is refused).
        let line = format!("{{\"op\":\"add\",\"customer_id\":\"{}\",\"Op\":\"add\"}}", person(0));
        assert_eq!(
            from_json_text(&line, at.clone(), &cx()).unwrap_err().rule,
            "event.unknown_field"
        );
        // The same text without the repeat is accepted.
        let line = format!("{{\"op\":\"add\",\"customer_id\":\"{}\"}}", person(0));
        assert!(from_json_text(&line, at, &cx()).is_ok());
    }

    #[test]
    fn decode_names_the_array_item_holding_a_repeated_key() {
        let text = r#"[{"op":"add"},{"a":1,"b":{"c":1,"c":2}},{"x":1,"x":2,"y":1,"y":2}]"#;
        let d = decode(text).unwrap();
        assert_eq!(
            d.duplicates,
            vec![(Some(1), "c".to_string()), (Some(2), "x".to_string())],
            "the first repeat of each object"
        );
        assert_eq!(d.value[2]["x"], 2, "the value itself is decoded as serde_json would");
        let d = decode(r#"{"op":"a","op":"b"}"#).unwrap();
        assert_eq!(d.duplicates, vec![(None, "op".to_string())]);
        assert!(decode(r#"{"op":"a"} x"#).is_err(), "trailing text is a syntax error");
        assert_eq!(
            decode("[1, 2.5, null, true, \"s\"]").unwrap().value,
            json!([1, 2.5, null, true, "s"])
        );
    }

    #[test]
    fn enqueue_builds_one_event_with_the_same_rules() {
        let now = Utc::now();
        let e = enqueue_event(Operation::Add, &person(0), Some("01.05.2020"), &IdPolicy::test(), now).unwrap();
        assert_eq!(e.source, "kfr enqueue");
        assert_eq!(e.start_date, NaiveDate::from_ymd_opt(2020, 5, 1));
        assert_eq!(e.occurred_at, now);
        let r = enqueue_event(
            Operation::Remove,
            &person(0),
            Some("2020-05-01"),
            &IdPolicy::test(),
            now,
        )
        .unwrap_err();
        assert_eq!(r.rule, "start_date.not_on_remove");
        let r = enqueue_event(Operation::Add, &person(0), None, &IdPolicy::prod(), now).unwrap_err();
        assert_eq!(r.rule, "customer_id.synthetic_not_allowed");
        assert!(!r.to_string().contains(&person(0)));
    }
}
