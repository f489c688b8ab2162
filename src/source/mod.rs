//! Sources of signal values: Prometheus and ticket systems, behind traits.
