//! plugvisor worker runtime.
