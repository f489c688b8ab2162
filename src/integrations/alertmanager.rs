//! Alertmanager webhook (version 4) as input.
