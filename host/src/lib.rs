//! plugvisor host.
