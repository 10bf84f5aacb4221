//! example plugins.
