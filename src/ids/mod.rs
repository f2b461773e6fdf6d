//! Customer identifiers (kfr-notes §7): validated types, environment policy and log pseudonyms.
