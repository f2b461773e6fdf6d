//! Deliberate defects for `kfr mock --quirk NAME`: each one breaks exactly one behaviour of the
//! fake KFR, so that `kfr checklist` can be shown to catch a KFR (or a proxy in front of it)
//! that gets that behaviour wrong. Without `--quirk` the mock stays as strict as ever; a quirk
//! is announced with a warning at start, since a quirky mock is wrong on purpose.

use std::collections::BTreeSet;

/// One deliberate defect. The names are the `--quirk` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize)]
pub enum Quirk {
    /// A repeated add answers 201 instead of 200 ("already registered").
    #[value(name = "duplicate-add-201")]
    #[serde(rename = "duplicate-add-201")]
    DuplicateAdd201,
    /// A batch whose `Content-Type` quotes the boundary is accepted instead of refused with 403.
    #[value(name = "quoted-boundary-accepted")]
    #[serde(rename = "quoted-boundary-accepted")]
    QuotedBoundaryAccepted,
    /// An invalid `CustomerID` on a single add or delete answers KFR-004 instead of KFR-005.
    #[value(name = "invalid-id-wrong-code")]
    #[serde(rename = "invalid-id-wrong-code")]
    InvalidIdWrongCode,
    /// The own lookup shows batch entries as soon as the batch is accepted, while they are
    /// stored (and can be deleted) only when ingested: "last entry visible" no longer proves
    /// the batch is stored (kfr-notes §6).
    #[value(name = "batch-visible-before-ingested")]
    #[serde(rename = "batch-visible-before-ingested")]
    BatchVisibleBeforeIngested,
    /// Requests for another institution's `fid` are served instead of refused with 403 KFR-003.
    #[value(name = "foreign-fid-accepted")]
    #[serde(rename = "foreign-fid-accepted")]
    ForeignFidAccepted,
    /// Deleting a relationship that is not registered answers 204 instead of 404 KFR-008.
    #[value(name = "delete-missing-204")]
    #[serde(rename = "delete-missing-204")]
    DeleteMissing204,
}

impl Quirk {
    /// Every quirk, in declaration order.
    pub const ALL: [Quirk; 6] = [
        Quirk::DuplicateAdd201,
        Quirk::QuotedBoundaryAccepted,
        Quirk::InvalidIdWrongCode,
        Quirk::BatchVisibleBeforeIngested,
        Quirk::ForeignFidAccepted,
        Quirk::DeleteMissing204,
    ];

    /// The `--quirk` value.
    pub fn name(self) -> &'static str {
        match self {
            Quirk::DuplicateAdd201 => "duplicate-add-201",
            Quirk::QuotedBoundaryAccepted => "quoted-boundary-accepted",
            Quirk::InvalidIdWrongCode => "invalid-id-wrong-code",
            Quirk::BatchVisibleBeforeIngested => "batch-visible-before-ingested",
            Quirk::ForeignFidAccepted => "foreign-fid-accepted",
            Quirk::DeleteMissing204 => "delete-missing-204",
        }
    }
}

impl std::fmt::Display for Quirk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The quirks a mock runs with; empty by default.
pub type Quirks = BTreeSet<Quirk>;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum as _;

    #[test]
    fn flag_values_serde_names_and_name_agree() {
        for q in Quirk::ALL {
            assert_eq!(Quirk::from_str(q.name(), false).unwrap(), q);
            assert_eq!(serde_json::to_value(q).unwrap(), q.name());
        }
        assert_eq!(Quirk::value_variants().len(), Quirk::ALL.len());
    }
}
