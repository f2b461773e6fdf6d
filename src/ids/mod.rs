//! Customer identifiers (kfr-notes §7): validated types, environment policy and log pseudonyms.
// Placeholder until the ids branch lands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(String);
impl CustomerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn log(&self) -> &str {
        "masked"
    }
}
