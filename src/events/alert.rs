//! What an alert event (`"type":"alert"`, docs/events.md) adds to the event object: the rule,
//! the MITRE ATT&CK technique ids and what triggered it (the ECS severity goes into the event's
//! `event` object). The rules
//! (src/rules/) fill it; the builder gives the alert its own `seq`.

use serde::Serialize;

#[derive(Serialize, Debug, Clone)]
pub struct AlertInfo {
    pub rule: RuleRef,
    /// ECS `event.severity` (21 low, 47 medium, 73 high, 99 critical), written in `event`.
    #[serde(skip)]
    pub severity: u8,
    pub threat: Threat,
    pub trigger: Trigger,
}

#[derive(Serialize, Debug, Clone)]
pub struct RuleRef {
    pub id: String,
    pub name: String,
    pub description: String,
    /// The severity's word: `low`, `medium`, `high` or `critical`.
    pub severity: &'static str,
    /// Where the rule came from (`default` or the rule file's path).
    pub ruleset: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct Threat {
    pub framework: &'static str,
    pub technique: Technique,
}

#[derive(Serialize, Debug, Clone)]
pub struct Technique {
    pub id: Vec<String>,
}

/// The event that matched: its `seq` and `type`, and every field the rule's condition read,
/// by its dotted name (a list field as an array, an absent one as null).
#[derive(Serialize, Debug, Clone)]
pub struct Trigger {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl AlertInfo {
    /// Appends `,"rule":{...},"threat":{...},"trigger":{...}` (the keys as the
    /// serde derive of a flattened field writes them).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let text = serde_json::to_vec(self)?;
        // `{...}` → `,...`: the object's members continue the event's.
        if let Some(inner) = text.get(1..text.len().saturating_sub(1)) {
            out.push(b',');
            out.extend_from_slice(inner);
        }
        Ok(())
    }
}
