//! `BenchmarkResult`: one check's outcome, as the Python suite reports it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How serious a result is. `passed` decides pass or fail, not the severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// As expected.
    Info,
    /// Noteworthy.
    Warning,
    /// A real mismatch.
    Danger,
    /// The check could not run.
    Error,
    /// Not applicable here (e.g. no reference model).
    Skipped,
}

impl Severity {
    fn icon(self) -> &'static str {
        match self {
            Severity::Info => "🟢",
            Severity::Warning => "🟡",
            Severity::Danger => "🔴",
            Severity::Error => "❌",
            Severity::Skipped => "⏭️",
        }
    }
}

/// The outcome of one benchmark.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchmarkResult {
    /// The benchmark's name, e.g. `backward_hooks`.
    pub name: String,
    /// How serious it is.
    pub severity: Severity,
    /// One line for people.
    pub message: String,
    /// Structured details (numbers, offending hook names...).
    pub details: BTreeMap<String, Value>,
    /// Whether the check passed. A skipped check has `passed = true` and severity `Skipped`.
    pub passed: bool,
    /// The suite phase (1: bridge vs HF, 2: vs HookedTransformer, 3: processed), if any.
    pub phase: Option<u8>,
    /// Wall time of the check, when the suite timed it (a recording shared by two checks is
    /// charged to the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The process's peak resident memory (MiB) when the check finished, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// err of every compared hook, by name (the comparisons behind the heatmaps of the HTML
    /// report); `inf` for a shape or non-finite mismatch. Not printed.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "infinite_as_null"
    )]
    pub errors: BTreeMap<String, f64>,
}

/// JSON has no infinity: an infinite err (shapes or non-finite entries differ) is written as
/// `null` and read back as infinity.
mod infinite_as_null {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        errors: &BTreeMap<String, f64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let shown: BTreeMap<&str, Option<f64>> = errors
            .iter()
            .map(|(name, &err)| (name.as_str(), err.is_finite().then_some(err)))
            .collect();
        shown.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, f64>, D::Error> {
        let read = BTreeMap::<String, Option<f64>>::deserialize(deserializer)?;
        Ok(read
            .into_iter()
            .map(|(name, err)| (name, err.unwrap_or(f64::INFINITY)))
            .collect())
    }
}

impl BenchmarkResult {
    fn new(name: &str, severity: Severity, message: impl Into<String>, passed: bool) -> Self {
        BenchmarkResult {
            name: name.to_owned(),
            severity,
            message: message.into(),
            details: BTreeMap::new(),
            passed,
            phase: None,
            seconds: None,
            peak_rss_mib: None,
            errors: BTreeMap::new(),
        }
    }

    /// A passing result.
    pub fn pass(name: &str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Info, message, true)
    }

    /// A failing result (a mismatch).
    pub fn fail(name: &str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Danger, message, false)
    }

    /// A check that could not run.
    pub fn error(name: &str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Error, message, false)
    }

    /// A check that does not apply.
    pub fn skipped(name: &str, message: impl Into<String>) -> Self {
        Self::new(name, Severity::Skipped, message, true)
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.details.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Tags the result with its phase.
    pub fn in_phase(mut self, phase: u8) -> Self {
        self.phase = Some(phase);
        self
    }

    /// Records the err of each compared hook (see [`BenchmarkResult::errors`]).
    pub fn with_errors(mut self, errors: impl IntoIterator<Item = (String, f64)>) -> Self {
        self.errors.extend(errors);
        self
    }

    /// Whether the check ran (was not skipped).
    pub fn ran(&self) -> bool {
        self.severity != Severity::Skipped
    }
}

impl fmt::Display for BenchmarkResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (self.severity, self.passed) {
            (Severity::Skipped, _) => "SKIPPED",
            (_, true) => "PASS",
            (_, false) => "FAIL",
        };
        write!(
            f,
            "{} [{verdict}] {}: {}",
            self.severity.icon(),
            self.name,
            self.message
        )?;
        for (key, value) in &self.details {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            write!(f, "\n  {key}: {shown}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_python_suite() {
        let result =
            BenchmarkResult::fail("backward_hooks", "Found 1 mismatch").with("mismatches", 1);
        assert_eq!(
            result.to_string(),
            "🔴 [FAIL] backward_hooks: Found 1 mismatch\n  mismatches: 1"
        );
        let skipped = BenchmarkResult::skipped("generation", "no tokenizer");
        assert_eq!(skipped.to_string(), "⏭️ [SKIPPED] generation: no tokenizer");
        assert!(skipped.passed && !skipped.ran());
    }
}
