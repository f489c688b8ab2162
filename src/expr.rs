//! TODO(core)
