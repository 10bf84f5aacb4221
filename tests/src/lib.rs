//! test support.
