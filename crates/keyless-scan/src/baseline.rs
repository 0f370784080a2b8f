//! Baselines: the fingerprints of findings already known (and accepted or
//! being dealt with), so a scan reports only new ones.
//!
//! File format (JSON): `{"version": 1, "findings": [{"fingerprint",
//! "rule_id", "path"}]}`; only fingerprints matter when filtering, the rest
//! helps a reviewer. No secret is stored.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{ScanError, ScanReport};

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    fingerprint: String,
    #[serde(default)]
    rule_id: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    findings: Vec<Entry>,
}

/// A set of accepted finding fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    entries: Vec<(String, String, String)>,
    fingerprints: BTreeSet<String>,
}

impl Baseline {
    /// Reads a baseline file.
    pub fn load(path: &Path) -> Result<Self, ScanError> {
        let bytes = std::fs::read(path).map_err(|source| ScanError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file: File = serde_json::from_slice(&bytes).map_err(|e| ScanError::Baseline {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(ScanError::Baseline {
                path: path.display().to_string(),
                reason: format!("unsupported version {}", file.version),
            });
        }
        let mut b = Baseline::default();
        for e in file.findings {
            b.insert(e.fingerprint, e.rule_id, e.path);
        }
        Ok(b)
    }

    /// The baseline accepting every finding of `r`.
    pub fn from_report(r: &ScanReport) -> Self {
        let mut b = Baseline::default();
        for f in &r.findings {
            b.insert(f.fingerprint.clone(), f.rule_id.clone(), f.path.clone());
        }
        b
    }

    fn insert(&mut self, fingerprint: String, rule_id: String, path: String) {
        if self.fingerprints.insert(fingerprint.clone()) {
            self.entries.push((fingerprint, rule_id, path));
        }
    }

    /// Writes the baseline as JSON.
    pub fn save(&self, path: &Path) -> Result<(), ScanError> {
        let file = File {
            version: 1,
            findings: self
                .entries
                .iter()
                .map(|(f, r, p)| Entry {
                    fingerprint: f.clone(),
                    rule_id: r.clone(),
                    path: p.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| ScanError::Baseline {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| ScanError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Whether a fingerprint is in the baseline.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// Number of fingerprints.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether the baseline is empty.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// `r` without the findings whose fingerprint is in the baseline.
    pub fn filter(&self, mut r: ScanReport) -> ScanReport {
        r.findings.retain(|f| !self.contains(&f.fingerprint));
        r
    }
}
